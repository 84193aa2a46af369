"""Trainable heads on frozen backbone features, and the serving model (backbone + heads).

Each projection head is residual, `normalize(x + f(x))`, with the last layer of `f`
initialised to zero: an untrained model reproduces the backbone's embeddings (the
zero-shot baseline) exactly, and training starts from there rather than from noise.
Attribute heads classify the image embedding (material, pattern, neckline, sleeve, and the
garment type as `category`) so that the retrieval space itself carries them; text-query
ranking adds their log-probabilities (late fusion). The t2f fusion weight and the softmax
temperature are learnable scalars.

`ProtocolHeads` works on cached features only (training, validation, catalog building);
`ProtocolModel` puts the backbone in front of it for serving raw images and texts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from protocol.data.images import load_image
from protocol.model import onednn
from protocol.retrieval.attribute_scoring import (
    CATEGORY,
    AttributeColumns,
    AttributeScores,
    extend_items,
    extend_queries,
    ground_query_texts,
    indicators,
)

ATTRIBUTE_HEADS = ("material", "pattern", "neckline", "sleeve")
# Every classifier on the image embedding: the garment type (category2) and the attributes.
CLASSIFIER_HEADS = (CATEGORY, *ATTRIBUTE_HEADS)
HEAD_KINDS = ("mlp", "linear", "identity")
INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp: beyond it the softmax saturates and training destabilises
EMBED_BATCH = 4096


@dataclass
class HeadsConfig:
    in_dim: int
    out_dim: int = 512
    head: str = "mlp"  # "mlp" | "linear" | "identity" (the zero-shot baseline, no parameters)
    hidden_dim: int = 512
    dropout: float = 0.1
    attribute_heads: bool = True
    attribute_classes: dict[str, list[str]] = field(default_factory=dict)  # attribute -> class names
    learn_fusion: bool = True
    init_fusion: float = 0.5  # t2f weight of the image embedding: normalize(w*img + (1-w)*txt)
    # Late-fusion weight of the attribute heads in text-query ranking (0: the embedding alone);
    # fitted on validation during training (protocol.retrieval.attribute_scoring).
    attribute_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("in_dim", "out_dim", "hidden_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HeadsConfig.{name} must be a positive integer, got {value!r}")
        if self.head not in HEAD_KINDS:
            raise ValueError(f"HeadsConfig.head must be one of {HEAD_KINDS}, got {self.head!r}")
        if self.head == "identity" and self.out_dim != self.in_dim:
            raise ValueError(f"identity heads need out_dim == in_dim, got {self.out_dim} != {self.in_dim}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"HeadsConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not (math.isfinite(self.attribute_weight) and self.attribute_weight >= 0):
            raise ValueError(f"HeadsConfig.attribute_weight must be finite and >= 0, got {self.attribute_weight!r}")
        if not 0 < self.init_fusion < 1:
            raise ValueError(f"HeadsConfig.init_fusion must be in (0, 1) (it is a sigmoid), got {self.init_fusion!r}")
        unknown = sorted(set(self.attribute_classes) - set(CLASSIFIER_HEADS))
        if unknown:
            raise ValueError(f"HeadsConfig.attribute_classes has unknown attributes {unknown}; use {CLASSIFIER_HEADS}")
        for attribute, classes in self.attribute_classes.items():
            if len(classes) < 2 or len(set(classes)) != len(classes):
                raise ValueError(
                    f"HeadsConfig.attribute_classes[{attribute!r}] needs at least 2 distinct classes, got {classes!r}"
                )
        self.attribute_classes = {a: list(map(str, c)) for a, c in self.attribute_classes.items()}


class ProjectionHead(nn.Module):
    """normalize(skip(x) + f(x)); f's last layer starts at zero, so the head starts as the identity."""

    def __init__(self, kind: str, in_dim: int, out_dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.skip = nn.Identity() if in_dim == out_dim else _eye_linear(in_dim, out_dim)
        if kind == "mlp":
            self.residual = nn.Sequential(
                nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim)
            )
        elif kind == "linear":
            self.residual = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
        else:
            self.residual = None
        if self.residual is not None:
            nn.init.zeros_(self.residual[-1].weight)
            nn.init.zeros_(self.residual[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(x)
        if self.residual is not None:
            y = y + onednn.run_layers(self.residual, x)  # its products by oneDNN on a CPU: ~2x MKL's here
        return F.normalize(y, dim=-1)


def _eye_linear(in_dim: int, out_dim: int) -> nn.Linear:
    # A truncated/padded identity: as close to "features unchanged" as a dimension change allows.
    layer = nn.Linear(in_dim, out_dim, bias=False)
    nn.init.eye_(layer.weight)
    return layer


class ProtocolHeads(nn.Module):
    """Image and text projection heads, attribute classifiers, fusion weight and temperature."""

    def __init__(self, config: HeadsConfig):
        super().__init__()
        self.config = config
        c = config
        self.image_head = ProjectionHead(c.head, c.in_dim, c.out_dim, c.hidden_dim, c.dropout)
        self.text_head = ProjectionHead(c.head, c.in_dim, c.out_dim, c.hidden_dim, c.dropout)
        classes = c.attribute_classes if c.attribute_heads else {}
        self.attribute_heads = nn.ModuleDict({a: nn.Linear(c.out_dim, len(v)) for a, v in sorted(classes.items())})
        trainable = c.head != "identity"
        self.fusion_logit = nn.Parameter(
            torch.tensor(math.log(c.init_fusion / (1 - c.init_fusion))), requires_grad=trainable and c.learn_fusion
        )
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE), requires_grad=trainable)

    @classmethod
    def identity(cls, dim: int, fusion_weight: float = HeadsConfig.init_fusion) -> "ProtocolHeads":
        """Heads that pass backbone features through unchanged: the zero-shot baseline."""
        config = HeadsConfig(in_dim=dim, out_dim=dim, head="identity", attribute_heads=False,
                             learn_fusion=False, init_fusion=fusion_weight)
        return cls(config).eval()

    def forward_image(self, feats: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        emb = self.image_head(feats)
        return emb, {name: head(emb) for name, head in self.attribute_heads.items()}

    def forward_text(self, feats: torch.Tensor) -> torch.Tensor:
        return self.text_head(feats)

    def scale(self) -> torch.Tensor:
        """Softmax temperature as a multiplier of cosine similarities (CLIP's exp(logit_scale), clamped)."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def fusion(self) -> torch.Tensor:
        """The t2f image weight as a tensor (differentiable when learned)."""
        return torch.sigmoid(self.fusion_logit)

    @property
    def fusion_weight(self) -> float:
        return float(self.fusion().detach())

    def n_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def embed_numpy(
        self, image_feats: np.ndarray | None, text_feats: np.ndarray | None, batch_size: int = EMBED_BATCH
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Cached backbone features -> L2-normalised float32 embeddings (either side may be None)."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                image = None if image_feats is None else _batched(lambda x: self.forward_image(x)[0], image_feats, batch_size)
                text = None if text_feats is None else _batched(self.forward_text, text_feats, batch_size)
        finally:
            self.train(was_training)
        return image, text

    def attribute_columns(self) -> AttributeColumns:
        """(attribute, value) of every attribute head's class, in the order of `attribute_log_probs`."""
        return tuple((name, value) for name in self.attribute_heads for value in self.config.attribute_classes[name])

    def attribute_log_probs(self, image_emb: np.ndarray, batch_size: int = EMBED_BATCH) -> np.ndarray:
        """[N, V] each attribute head's log-probabilities of its classes, from image *embeddings*."""
        if not len(self.attribute_heads):
            return np.zeros((len(image_emb), 0), dtype=np.float32)
        def log_probs(emb: torch.Tensor) -> torch.Tensor:
            return torch.cat([F.log_softmax(head(emb), dim=-1) for head in self.attribute_heads.values()], dim=1)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                return _batched(log_probs, image_emb, batch_size)
        finally:
            self.train(was_training)

    def query_indicators(self, query_texts: Sequence[str]) -> np.ndarray:
        """[Q, V] 1 where a query text grounds an attribute head's class (all 0 for an empty text)."""
        columns = self.attribute_columns()
        return indicators(ground_query_texts(query_texts, sorted({a for a, _ in columns})), columns)

    def attribute_scores(self, query_texts: Sequence[str], query_image_emb: np.ndarray, catalog_image_emb: np.ndarray,
                         weight: float | None = None) -> AttributeScores | None:
        """Late fusion of the attribute heads for these text queries and catalog (None: no heads, or weight 0).

        `weight` None: the fitted `config.attribute_weight`.
        """
        weight = self.config.attribute_weight if weight is None else weight
        if not len(self.attribute_heads) or weight == 0:
            return None
        return AttributeScores(weight, self.query_indicators(query_texts), self.attribute_log_probs(query_image_emb),
                               self.attribute_log_probs(catalog_image_emb))

    def ranking_queries(self, query_texts: Sequence[str], query_emb: np.ndarray) -> np.ndarray:
        """Query vectors whose inner products with `ranking_catalog` rank: the embeddings, extended for late
        fusion when the heads have a fitted attribute weight. A query text of "" (an image query) gets no
        attribute term."""
        if not self._late_fusion():
            return query_emb
        return extend_queries(query_emb, self.query_indicators(query_texts), self.config.attribute_weight)

    def ranking_catalog(self, catalog_image_emb: np.ndarray) -> np.ndarray:
        """The catalog side of `ranking_queries`: image embeddings, extended by their log-probabilities."""
        if not self._late_fusion():
            return catalog_image_emb
        return extend_items(catalog_image_emb, self.attribute_log_probs(catalog_image_emb))

    def _late_fusion(self) -> bool:
        return bool(len(self.attribute_heads)) and self.config.attribute_weight > 0

    def state_for_checkpoint(self) -> dict[str, Any]:
        """Plain config + tensors: reloadable with torch.load(weights_only=True)."""
        return {"config": asdict(self.config), "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> "ProtocolHeads":
        """Heads from `state_for_checkpoint()` output, or from a training checkpoint holding it under "heads"."""
        if "heads" in state:
            state = state["heads"]
        if "config" not in state or "state_dict" not in state:
            raise ValueError(
                f"not a heads checkpoint: expected keys 'config' and 'state_dict', got {sorted(state)}; "
                "pass a checkpoint written by protocol.training (epoch_N.pt, best.pt, final.pt)"
            )
        heads = cls(HeadsConfig(**state["config"]))
        heads.load_state_dict(state["state_dict"])
        return heads.eval()


def _batched(fn, feats: np.ndarray, batch_size: int) -> np.ndarray:
    feats = np.asarray(feats, dtype=np.float32)
    if feats.ndim != 2:
        raise ValueError(f"features must be a 2-D array [n, dim], got shape {feats.shape}")
    out = [fn(torch.from_numpy(feats[i : i + batch_size])).numpy() for i in range(0, len(feats), batch_size)]
    if out:
        return np.concatenate(out)
    return fn(torch.from_numpy(feats[:0])).numpy()  # the output's width, for no rows


class ProtocolModel:
    """Backbone + heads: raw images and texts -> L2-normalised embeddings (what the pyfunc model serves)."""

    def __init__(self, backbone, heads: ProtocolHeads, batch_size: int = 32):
        if backbone.embed_dim != heads.config.in_dim:
            raise ValueError(
                f"backbone {backbone.spec.model} embeds to {backbone.embed_dim} dims but the heads expect "
                f"{heads.config.in_dim}: load heads trained on this backbone's features"
            )
        self.backbone = backbone
        self.heads = heads.eval()
        self.batch_size = batch_size

    @property
    def fusion_weight(self) -> float:
        return self.heads.fusion_weight

    def encode_image_numpy(self, images: Sequence[Image.Image | bytes | str | Path]) -> np.ndarray:
        chunks = []
        for i in range(0, len(images), self.batch_size):
            feats = self.backbone.encode_images([load_image(x) for x in images[i : i + self.batch_size]])
            chunks.append(self.heads.embed_numpy(feats, None)[0])
        return _concat(chunks, self.heads.config.out_dim)

    def encode_text_numpy(self, texts: Sequence[str]) -> np.ndarray:
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts must be strings; rows {bad[:5]} are {type(texts[bad[0]]).__name__}")
        chunks = []
        for i in range(0, len(texts), self.batch_size):
            feats = self.backbone.encode_texts(list(texts[i : i + self.batch_size]))
            chunks.append(self.heads.embed_numpy(None, feats)[1])
        return _concat(chunks, self.heads.config.out_dim)


def _concat(chunks: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros((0, dim), dtype=np.float32)
