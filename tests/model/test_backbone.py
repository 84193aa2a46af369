"""The backbone factory on the tiny open_clip config: frozen model, fingerprints, weights files."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from protocol.model.backbone import (
    Backbone,
    BackboneSpec,
    FingerprintMismatchError,
    check_fingerprint,
    create_backbone,
    save_weights,
)

TINY = "protocol-tiny"


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return create_backbone(BackboneSpec(TINY, seed=0), device="cpu")  # exact comparisons need one device


def drawn_images(n: int) -> list[Image.Image]:
    images = []
    for i in range(n):
        image = Image.new("RGB", (80, 60), (20 * i % 256, 90, 200 - 10 * i % 200))
        ImageDraw.Draw(image).ellipse((5 + i, 5, 50, 40 + i), fill=(250, 30 * i % 256, 10))
        images.append(image)
    return images


def test_factory_builds_a_frozen_tiny_model(tiny):
    assert tiny.spec == BackboneSpec(TINY, "none", 0)
    assert tiny.device == torch.device("cpu")
    assert create_backbone(BackboneSpec(TINY)).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not tiny.model.training
    assert all(not p.requires_grad for p in tiny.model.parameters())
    assert tiny.embed_dim == 32
    assert tiny.source == "seed:0"
    assert tuple(tiny.preprocess(drawn_images(1)[0]).shape) == (3, 64, 64)
    assert tuple(tiny.tokenizer(["a denim jacket"]).shape) == (1, 32)
    assert len(tiny.fingerprint) == 64 and int(tiny.fingerprint, 16) >= 0


def test_same_seed_same_fingerprint_other_seed_other_fingerprint(tiny):
    again = create_backbone(BackboneSpec(TINY, seed=0), device="cpu")
    other = create_backbone(BackboneSpec(TINY, seed=1))
    assert again.fingerprint == tiny.fingerprint
    assert other.fingerprint != tiny.fingerprint
    texts = ["a leather skirt", "a v-neck cardigan"]
    np.testing.assert_array_equal(again.encode_texts(texts), tiny.encode_texts(texts))


def test_factory_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    create_backbone(BackboneSpec(TINY, seed=7))
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())


def test_encoders_return_normalised_float32_rows(tiny):
    images = tiny.encode_images(drawn_images(5), batch_size=2)
    texts = tiny.encode_texts(["denim shorts", "", "a crew neck tee " * 30], batch_size=2)
    assert images.shape == (5, 32) and texts.shape == (3, 32)
    assert images.dtype == np.float32 and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(images[0], images[1])
    assert tiny.encode_texts([]).shape == (0, 32)
    # batching does not change the result
    np.testing.assert_allclose(tiny.encode_images(drawn_images(5), batch_size=5), images, atol=1e-5)


def test_check_fingerprint_names_both():
    check_fingerprint("abc", "abc", "catalog x")
    with pytest.raises(FingerprintMismatchError) as err:
        check_fingerprint("a" * 64, "b" * 64, "catalog /tmp/cat")
    message = str(err.value)
    assert "a" * 64 in message and "b" * 64 in message and "catalog /tmp/cat" in message
    assert isinstance(err.value, ValueError)


def test_weights_file_round_trip_through_open_clip_loading(tiny, tmp_path):
    path = save_weights(create_backbone(BackboneSpec(TINY, seed=3)), tmp_path / "tiny.pt")
    loaded = create_backbone(BackboneSpec(TINY, pretrained=str(path)), device="cpu")
    seeded = create_backbone(BackboneSpec(TINY, seed=3), device="cpu")
    assert loaded.source == f"file:{path.resolve()}"
    # the fingerprint hashes architecture + weights, not their source
    assert loaded.fingerprint == seeded.fingerprint != tiny.fingerprint
    for (name, a), (_, b) in zip(loaded.model.state_dict().items(), seeded.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in loaded.model.parameters())
    images = drawn_images(3)
    np.testing.assert_array_equal(loaded.encode_images(images), seeded.encode_images(images))


def test_weights_that_do_not_fit_give_a_clear_error(tiny, tmp_path):
    state = dict(tiny.model.state_dict())
    state.pop("text_projection")
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(RuntimeError, match="could not build open_clip model 'protocol-tiny'.*partial.pt.*text_projection"):
        create_backbone(BackboneSpec(TINY, pretrained=str(tmp_path / "partial.pt")))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="garbage.pt.*pass a local weights file"):
        create_backbone(BackboneSpec(TINY, pretrained=str(tmp_path / "garbage.pt")))


def test_bad_specs_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt.*does not exist"):
        create_backbone(BackboneSpec(TINY, pretrained=str(tmp_path / "missing.pt")))
    with pytest.raises(ValueError, match="'no-such-tag' is neither a local weights file.*'none'"):
        create_backbone(BackboneSpec("ViT-B-32", pretrained="no-such-tag"))
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Z-99'"):
        create_backbone(BackboneSpec("ViT-Z-99"))


def test_hub_tag_without_network_says_what_to_do(tmp_path):
    # A real open_clip tag through the real download path, in a process that cannot
    # reach the hub and has an empty hub cache (so nothing is downloaded anywhere).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path)}
    code = (
        "from protocol.model.backbone import BackboneSpec, create_backbone\n"
        "try:\n"
        "    create_backbone(BackboneSpec('ViT-B-32', pretrained='openai'))\n"
        "except RuntimeError as e:\n"
        "    print('ERROR:', e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ERROR: could not build open_clip model 'ViT-B-32' with pretrained='openai'" in done.stdout
    assert "pass a local weights file" in done.stdout and "'none'" in done.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_encoding_matches_cpu_within_half_precision(tiny):
    on_gpu = create_backbone(BackboneSpec(TINY, seed=0), device="cuda")
    assert on_gpu.fingerprint == tiny.fingerprint  # hashed on the CPU before the move
    assert next(on_gpu.model.parameters()).device.type == "cuda"
    images, texts = drawn_images(4), ["a denim jacket", "leather shorts"]
    gpu_images, gpu_texts = on_gpu.encode_images(images), on_gpu.encode_texts(texts)
    assert gpu_images.dtype == np.float32 and gpu_texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(gpu_images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(gpu_images, tiny.encode_images(images), atol=1e-2)
    np.testing.assert_allclose(gpu_texts, tiny.encode_texts(texts), atol=1e-2)


@pytest.mark.parametrize("model_name", ["protocol-tiny", "ViT-B-32"])
def test_trimmed_text_encoding_equals_open_clip_encode_text(model_name):
    """Cutting the padding after the last end token must not change a single embedding."""
    import torch

    from protocol.model.backbone import BackboneSpec, create_backbone, encode_text_trimmed

    # on the CPU: a GPU may pick other attention kernels for another length, which is rounding, not meaning
    backbone = create_backbone(BackboneSpec(model_name, "none", 3), device="cpu")
    texts = ["tee", "a long relaxed cotton crew-neck tee with short sleeves, pairs well with our denim shorts",
             "leather jacket"]
    tokens = backbone.tokenizer(texts)
    assert int(tokens.argmax(dim=-1).max()) + 1 < tokens.shape[1]  # there is padding to cut
    with torch.inference_mode():
        full = backbone.model.encode_text(tokens)
        trimmed = encode_text_trimmed(backbone.model, tokens)
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-4)
