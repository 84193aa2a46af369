"""The backbone's forward runtime: oneDNN on a CPU gives eager's features within 1e-5, leaves the
fingerprint alone, and is recorded in `Backbone.runtime`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip.transformer import ResidualAttentionBlock
from PIL import Image, ImageDraw
from torch.profiler import ProfilerActivity, profile

from protocol.model.backbone import (
    FORWARD_AUTO,
    FORWARD_EAGER,
    FORWARD_ONEDNN,
    BackboneSpec,
    OneDnnResidualAttentionBlock,
    backbone_fingerprint,
    create_backbone,
    use_forward,
)
from tests.conftest import TINY_MODEL

EXACT = 1e-5  # max abs difference of L2-normalised features the oneDNN forward may have
ONEDNN_OP = "mkldnn::_linear_pointwise"
TEXTS = ["tee", "a long relaxed cotton crew-neck tee with short sleeves, pairs well with our denim shorts",
         "black leather jacket"]


def drawn_images(n: int) -> list[Image.Image]:
    images = []
    for i in range(n):
        image = Image.new("RGB", (90, 70), (30 * i % 256, 120, 200 - 20 * i))
        ImageDraw.Draw(image).rectangle((5 + 3 * i, 8, 60, 50 + i), fill=(240, 40 * i % 256, 20))
        images.append(image)
    return images


@pytest.fixture(scope="module")
def pair():
    """The same seeded tiny weights twice: the default runtime (oneDNN on this CPU) and eager."""
    spec = BackboneSpec(TINY_MODEL, seed=0)
    return create_backbone(spec, device="cpu"), create_backbone(spec, device="cpu", forward=FORWARD_EAGER)


def ops_run(call) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    return {event.key for event in prof.key_averages()}


def test_onednn_features_equal_eager_within_tolerance(pair):
    fast, eager = pair
    images = drawn_images(5)
    for got, want in ((fast.encode_images(images), eager.encode_images(images)),
                      (fast.encode_texts(TEXTS), eager.encode_texts(TEXTS))):
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert np.abs(got - want).max() <= EXACT
    # the setting really changes the kernels: oneDNN's linear op runs in one and only in one
    assert ONEDNN_OP in ops_run(lambda: fast.encode_texts(TEXTS))
    assert ONEDNN_OP not in ops_run(lambda: eager.encode_texts(TEXTS))


def test_the_full_causal_mask_and_the_untrimmed_text_path_agree(pair):
    """open_clip's encode_text over the whole context (the causal mask at full length) agrees too."""
    fast, eager = pair
    tokens = fast.tokenizer(TEXTS)
    with torch.inference_mode():
        got, want = fast.model.encode_text(tokens), eager.model.encode_text(tokens)
    torch.testing.assert_close(torch.nn.functional.normalize(got, dim=-1),
                               torch.nn.functional.normalize(want, dim=-1), atol=EXACT, rtol=0)


def test_with_gradients_on_the_blocks_run_open_clips_own_forward(pair):
    """Outside inference (autograd on), the oneDNN block falls back to open_clip's forward: the same bits."""
    fast, eager = pair
    pixels = torch.stack([fast.preprocess(im) for im in drawn_images(2)])
    with torch.enable_grad():
        assert torch.equal(fast.model.encode_image(pixels), eager.model.encode_image(pixels))


def test_fingerprint_and_state_dict_do_not_depend_on_the_runtime(pair):
    fast, eager = pair
    assert fast.runtime["forward"] == FORWARD_ONEDNN and eager.runtime["forward"] == FORWARD_EAGER
    assert fast.fingerprint == eager.fingerprint == backbone_fingerprint(TINY_MODEL, fast.model)
    assert list(fast.model.state_dict()) == list(eager.model.state_dict())
    assert any(isinstance(m, OneDnnResidualAttentionBlock) for m in fast.model.modules())
    assert not any(isinstance(m, OneDnnResidualAttentionBlock) for m in eager.model.modules())


def test_runtime_is_recorded_and_resolved(pair):
    fast, eager = pair
    assert fast.runtime == {"forward": FORWARD_ONEDNN, "torch": torch.__version__}
    assert eager.runtime == {"forward": FORWARD_EAGER, "torch": torch.__version__}
    model = create_backbone(BackboneSpec(TINY_MODEL, seed=0), device="cpu").model
    # auto on a device oneDNN does not serve falls back to eager, and undoes the swap
    assert use_forward(model, torch.device("cuda"), FORWARD_AUTO)["forward"] == FORWARD_EAGER
    blocks = [m for m in model.modules() if isinstance(m, ResidualAttentionBlock)]
    assert blocks and all(type(m) is ResidualAttentionBlock for m in blocks)
    with pytest.raises(ValueError, match="onednn.*cannot run here.*not a CPU"):
        use_forward(model, torch.device("cuda"), FORWARD_ONEDNN)
    with pytest.raises(ValueError, match="unknown forward 'fast'"):
        create_backbone(BackboneSpec(TINY_MODEL, seed=0), device="cpu", forward="fast")


def test_vit_b_32_onednn_forward_equals_eager_within_tolerance():
    """The real architecture (12 blocks of width 768), one model switched both ways."""
    backbone = create_backbone(BackboneSpec("ViT-B-32", "none", 0), device="cpu")
    assert backbone.runtime["forward"] == FORWARD_ONEDNN
    fingerprint = backbone.fingerprint
    images = drawn_images(2)
    fast = backbone.encode_images(images), backbone.encode_texts(TEXTS)
    backbone.runtime = use_forward(backbone.model, backbone.device, FORWARD_EAGER)
    eager = backbone.encode_images(images), backbone.encode_texts(TEXTS)
    for got, want in zip(fast, eager):
        assert np.abs(got - want).max() <= EXACT
    assert backbone_fingerprint("ViT-B-32", backbone.model) == fingerprint
