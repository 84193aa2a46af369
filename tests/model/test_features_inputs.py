"""The device route of image preprocessing (used on CUDA), run on the CPU against open_clip's PIL route."""

from __future__ import annotations

import io

import numpy as np
import open_clip
import pytest
import torch
import torchvision.transforms as T
from PIL import Image, ImageDraw

from protocol.model.backbone import BackboneSpec, create_backbone
from protocol.model.feature_inputs import (
    DECODED, JPEG, PREPROCESSED, EncodedImageBatch, PixelBatch, TensorPreprocess, decode_on, device_image_plan,
    input_plan,
)

CPU = torch.device("cpu")
LEVEL = 1 / 255 / 0.2613  # one uint8 step after open_clip's normalisation (mid std)
# (width, height, PIL mode, format): photo-like sizes above the model's input, a small one
# that is upscaled, and the modes a catalog brings (grey, alpha, palette).
CASES = [(300, 200, "RGB", "PNG"), (200, 300, "RGB", "PNG"), (50, 40, "RGB", "PNG"), (256, 256, "L", "PNG"),
         (260, 250, "RGBA", "PNG"), (240, 260, "P", "PNG"), (320, 240, "RGB", "JPEG"), (640, 480, "RGB", "JPEG"),
         (300, 300, "L", "JPEG")]


def photo(width: int, height: int, mode: str, fmt: str, seed: int = 0) -> bytes:
    """Shapes plus sensor-like noise, so resizing has edges and texture to disagree on."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), (230, 220, 210))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        draw.ellipse((x, y, x + int(rng.integers(5, width // 2)), y + int(rng.integers(5, height // 2))),
                     fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, 20, (height, width, 3))
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).convert(mode)
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def batch_of(cases) -> dict:
    values = [{"bytes": photo(*case, seed=i), "path": None} for i, case in enumerate(cases)]
    return {"rows": list(range(len(cases))), "item_ids": [f"I{i}" for i in range(len(cases))], "values": values}


@pytest.mark.parametrize("size", [224, 64])
def test_tensor_preprocessing_matches_open_clip_pil_preprocessing(size):
    preprocess = open_clip.image_transform(size, is_train=False)  # what create_model_and_transforms gives
    tensor_route = TensorPreprocess.of(preprocess)
    assert tensor_route is not None
    batch = batch_of(CASES)
    rows, encoded = EncodedImageBatch(preprocess)(batch)
    assert rows == batch["rows"]
    assert encoded.forms == [DECODED, DECODED, DECODED, DECODED, PREPROCESSED, PREPROCESSED, JPEG, JPEG, JPEG]
    got = tensor_route(decode_on(CPU, encoded))
    _, expected = PixelBatch(preprocess)(batch)
    assert got.shape == expected.shape == (len(CASES), 3, size, size) and got.dtype == torch.float32
    for case, mine, theirs in zip(CASES, got, expected):
        diff = (mine - theirs).abs()
        # bicubic in float (torch) vs fixed point (PIL): a level or so on average, a few more at hard edges
        assert float(diff.mean()) < 0.5 * LEVEL, case
        assert float(diff.max()) < 20 * LEVEL, case


def test_transforms_it_cannot_replay_fall_back_to_pil():
    plain = open_clip.image_transform(64, is_train=False)
    with_jitter = T.Compose([T.ColorJitter(0.4), *plain.transforms])
    assert TensorPreprocess.of(with_jitter) is None
    assert TensorPreprocess.of(lambda image: image) is None
    reordered = T.Compose([plain.transforms[3], plain.transforms[0], plain.transforms[4]])  # ToTensor first
    assert TensorPreprocess.of(reordered) is None


def test_device_route_embeds_like_the_cpu_route():
    tiny = create_backbone(BackboneSpec("protocol-tiny", seed=0), device="cpu")
    assert isinstance(input_plan("image", tiny).collate, PixelBatch)  # on a CPU the PIL route stays
    device_route = device_image_plan(tiny)
    cpu_route = input_plan("image", tiny)
    batch = batch_of(CASES + [(500, 700, "RGB", "JPEG")])
    on_device = device_route.features(device_route.collate(batch)[1]).numpy()
    on_cpu = cpu_route.features(cpu_route.collate(batch)[1]).numpy()
    np.testing.assert_allclose(np.linalg.norm(on_device, axis=1), 1.0, atol=1e-5)
    cosine = (on_device * on_cpu).sum(axis=1)
    assert cosine.min() > 0.999, cosine


def test_a_broken_jpeg_is_named_by_row():
    batch = batch_of([(320, 240, "RGB", "JPEG"), (320, 240, "RGB", "JPEG")])
    batch["values"][1] = {"bytes": batch["values"][1]["bytes"][:200], "path": None}  # header, then nothing
    preprocess = open_clip.image_transform(64, is_train=False)
    _, encoded = EncodedImageBatch(preprocess)(batch)
    with pytest.raises(ValueError, match="row 1 \\(item_id 'I1'\\): image cannot be decoded"):
        decode_on(CPU, encoded)
