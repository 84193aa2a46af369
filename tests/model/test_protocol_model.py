"""ProtocolHeads on small arrays, and ProtocolModel on the tiny open_clip backbone."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from protocol.model.protocol_model import HeadsConfig, ProtocolHeads, ProtocolModel

CLASSES = {"material": ["cotton", "denim", "wool"], "neckline": ["crew", "v-neck"]}


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_identity_heads_reproduce_the_features():
    feats = unit_rows(10, 16)
    heads = ProtocolHeads.identity(16, fusion_weight=0.3)
    image, text = heads.embed_numpy(feats, feats[::-1].copy())
    np.testing.assert_allclose(image, feats, atol=1e-6)
    np.testing.assert_allclose(text, feats[::-1], atol=1e-6)
    assert heads.n_trainable_parameters() == 0
    assert heads.fusion_weight == pytest.approx(0.3)


@pytest.mark.parametrize("head", ["mlp", "linear"])
def test_untrained_heads_equal_the_baseline(head):
    feats = unit_rows(20, 24, seed=1)
    heads = ProtocolHeads(HeadsConfig(in_dim=24, out_dim=24, head=head, hidden_dim=32, attribute_classes=CLASSES))
    image, text = heads.embed_numpy(feats, feats)
    np.testing.assert_allclose(image, feats, atol=1e-6)
    np.testing.assert_allclose(text, feats, atol=1e-6)


def test_default_heads_have_about_a_million_parameters():
    heads = ProtocolHeads(HeadsConfig(in_dim=512))
    per_head = 2 * (512 * 512 + 512)  # two Linear(512, 512) layers
    assert heads.n_trainable_parameters() == 2 * per_head + 2  # + temperature and fusion logit
    assert 0.9e6 < heads.n_trainable_parameters() < 1.2e6
    with_attributes = ProtocolHeads(HeadsConfig(in_dim=512, attribute_classes=CLASSES))
    assert with_attributes.n_trainable_parameters() == 2 * per_head + 2 + (512 * 3 + 3) + (512 * 2 + 2)


def test_forward_shapes_attribute_logits_and_switches():
    heads = ProtocolHeads(HeadsConfig(in_dim=16, out_dim=8, hidden_dim=32, attribute_classes=CLASSES))
    emb, logits = heads.forward_image(torch.from_numpy(unit_rows(5, 16)))
    assert emb.shape == (5, 8)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(5))
    assert {k: tuple(v.shape) for k, v in logits.items()} == {"material": (5, 3), "neckline": (5, 2)}
    assert heads.forward_text(torch.from_numpy(unit_rows(5, 16))).shape == (5, 8)

    off = ProtocolHeads(HeadsConfig(in_dim=16, attribute_heads=False, learn_fusion=False, attribute_classes=CLASSES))
    assert off.forward_image(torch.from_numpy(unit_rows(2, 16)))[1] == {}
    assert not off.fusion_logit.requires_grad and off.logit_scale.requires_grad


def test_temperature_is_clamped_like_clip():
    heads = ProtocolHeads(HeadsConfig(in_dim=8))
    assert heads.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        heads.logit_scale.fill_(10.0)
    assert heads.scale().item() == pytest.approx(100.0)


def test_checkpoint_state_round_trips_through_a_weights_only_load(tmp_path):
    heads = ProtocolHeads(HeadsConfig(in_dim=16, hidden_dim=8, attribute_classes=CLASSES, init_fusion=0.7))
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.1 * torch.randn_like(p))  # move away from the identity start
    torch.save(heads.state_for_checkpoint(), tmp_path / "heads.pt")
    loaded = ProtocolHeads.from_checkpoint(torch.load(tmp_path / "heads.pt", weights_only=True))
    feats = unit_rows(6, 16)
    for a, b in zip(heads.embed_numpy(feats, feats), loaded.embed_numpy(feats, feats)):
        np.testing.assert_array_equal(a, b)
    assert loaded.config == heads.config
    assert loaded.fusion_weight == pytest.approx(heads.fusion_weight)
    assert ProtocolHeads.from_checkpoint({"heads": heads.state_for_checkpoint()}).config == heads.config
    with pytest.raises(ValueError, match="state_dict"):
        ProtocolHeads.from_checkpoint({"config": {}})


def test_embed_numpy_batches_and_restores_training_mode():
    heads = ProtocolHeads(HeadsConfig(in_dim=16, hidden_dim=8, dropout=0.5))
    with torch.no_grad():
        heads.image_head.residual[-1].weight.normal_()
    heads.train()
    feats = unit_rows(9, 16)
    whole, _ = heads.embed_numpy(feats, None)
    batched, none = heads.embed_numpy(feats, None, batch_size=4)
    np.testing.assert_allclose(whole, batched, atol=1e-6)  # eval mode: dropout off, batching invisible
    assert none is None and heads.training


@pytest.mark.parametrize("bad, match", [
    ({"head": "conv"}, "head"), ({"dropout": 1.0}, "dropout"), ({"init_fusion": 0.0}, "init_fusion"),
    ({"in_dim": 0}, "in_dim"), ({"attribute_classes": {"fabric": ["a", "b"]}}, "fabric"),
    ({"attribute_classes": {"material": ["cotton"]}}, "at least 2"),
])
def test_heads_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        HeadsConfig(**{"in_dim": 8, **bad})


# ----------------------------------------------------------------------------- ProtocolModel


@pytest.fixture(scope="module")
def tiny_backbone():
    from protocol.model.backbone import BackboneSpec, create_backbone

    return create_backbone(BackboneSpec("protocol-tiny", "none", 0), device="cpu")


def test_protocol_model_encodes_images_and_texts_through_backbone_and_heads(tmp_path, tiny_backbone):
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 30, 3), dtype=np.uint8)) for i in range(3)]
    buffer = io.BytesIO()
    images[1].save(buffer, format="PNG")
    path = tmp_path / "third.png"
    images[2].save(path)
    texts = ["a red cotton tee", "blue denim shorts", "black leather jacket"]

    dim = tiny_backbone.embed_dim
    heads = ProtocolHeads(HeadsConfig(in_dim=dim, out_dim=dim, hidden_dim=16, init_fusion=0.4))
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model = ProtocolModel(tiny_backbone, heads, batch_size=2)

    image_emb = model.encode_image_numpy([images[0], buffer.getvalue(), str(path)])
    text_emb = model.encode_text_numpy(texts)
    backbone_image = tiny_backbone.encode_images(images)
    expected_image, expected_text = heads.embed_numpy(backbone_image, tiny_backbone.encode_texts(texts))
    np.testing.assert_allclose(image_emb, expected_image, atol=1e-5)
    np.testing.assert_allclose(text_emb, expected_text, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text_emb, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(image_emb, backbone_image, atol=1e-3)  # the heads did act
    assert model.fusion_weight == pytest.approx(heads.fusion_weight)

    identity = ProtocolModel(tiny_backbone, ProtocolHeads.identity(dim))
    np.testing.assert_allclose(identity.encode_image_numpy(images), backbone_image, atol=1e-5)


def test_protocol_model_rejects_mismatched_heads_and_bad_inputs(tiny_backbone):
    with pytest.raises(ValueError, match="dims"):
        ProtocolModel(tiny_backbone, ProtocolHeads.identity(tiny_backbone.embed_dim + 1))
    model = ProtocolModel(tiny_backbone, ProtocolHeads.identity(tiny_backbone.embed_dim))
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        model.encode_image_numpy(["/nowhere.png"])
    with pytest.raises(TypeError, match="strings"):
        model.encode_text_numpy(["ok", 3])
    assert model.encode_text_numpy([]).shape == (0, tiny_backbone.embed_dim)
