"""`TrainConfig`: every training setting, with its default, in one place.

Defaults that belong to the heads or the sampler are read from `HeadsConfig` and
`SamplerConfig` so that each lives once. List-valued settings are comma-separated
strings ("cardigans,shorts", "category2=tees,material=cotton") so that the config
stays flat for command lines and MLflow parameters.

The ablation "plain InfoNCE adapter" is `attribute_heads=False, balanced_sampling=False,
hard_negatives=False, graded_pairs=False` (add `pair_positives=False` for text-image pairs
of items only).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from protocol.data.group_audit import MIN_GROUP_CONFIDENCE
from protocol.model.protocol_model import HeadsConfig
from protocol.model.sampler import SamplerConfig
from protocol.training.batches import UNIFORM_RELEVANCE, Relevance
from protocol.training.validation import CATALOG_SPLITS

OPERATIONAL_FIELDS = frozenset({"checkpoint_every", "log_every", "num_threads"})  # may change on resume
# May change on resume too, to recover from a divergence; the run then no longer matches an uninterrupted one.
RESUME_OVERRIDES = frozenset({"lr"})


@dataclass
class TrainConfig:
    # optimisation
    lr: float = 1e-4
    weight_decay: float = 0.01
    epochs: int = 10
    batch_size: int = 64
    seed: int = 42
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    warmup_fraction: float = 0.05  # of all steps, linear from 0; then cosine down to min_lr_ratio * lr
    min_lr_ratio: float = 0.0
    # Stop once the validation primary metric has not improved for this many epochs (0: run them all).
    # The schedule stays the one of all `epochs`, so a run that stops picks the checkpoint the full run
    # would have picked unless the metric recovers later; see docs/ARCHITECTURE.md, "Training defaults".
    patience: int = 3
    steps_per_epoch: int | None = None  # None: ceil(train pairs / batch_size), so pairs x epochs is the work
    # model
    head: str = HeadsConfig.head
    hidden_dim: int = HeadsConfig.hidden_dim
    dropout: float = HeadsConfig.dropout
    attribute_heads: bool = HeadsConfig.attribute_heads
    # a head for the garment type (category2) among the attribute heads, so that late fusion weighs being
    # the garment asked for beside its attributes; off, a confident material term could outrank it
    # (see docs/ARCHITECTURE.md, "Training defaults")
    category_head: bool = True
    learn_fusion: bool = HeadsConfig.learn_fusion
    # text -> image ranking adds the attribute heads' log-probabilities of the query's grounded values,
    # weighted by a late-fusion weight fitted on validation each epoch (needs attribute_heads)
    attribute_scoring: bool = True
    fusion_weight: float = HeadsConfig.init_fusion  # initial value when learned
    # supervision switches
    balanced_sampling: bool = SamplerConfig.balanced
    hard_negatives: bool = True  # negative pairs (mined, attribute-targeted, easy) as extra columns
    n_hard_negatives: int = 2  # negatives per anchor and step
    # the negatives' (and partners') texts also as image -> text columns. Off: on the embedded default
    # it cost every locked target (see docs/ARCHITECTURE.md, "Training defaults"), and image -> text is
    # no retrieval mode of the project; the negatives' images stay text -> image columns either way
    image_to_text_negatives: bool = False
    # partners and negatives enter the image side with gradients (the image head learns from graded
    # pairs and mined confusers too); off: they are embedding-bank lookups that train the text head only
    image_side_pairs: bool = True
    # same-category columns that contradict no known attribute of the anchor are left out of its
    # softmax instead of being pushed away as negatives (they may well be what the text describes)
    neutral_compatible: bool = True
    use_group_positives: bool = True  # in-batch images of one product group are positives
    min_group_confidence: float = MIN_GROUP_CONFIDENCE  # ... of groups.json groups this confident only
    pair_positives: bool = True  # one positive partner per anchor from pairs.parquet
    # graded soft targets: a positive weighs its type's relevance (own image 1), x contradiction_factor
    # if it contradicts the anchor on a known attribute; off: every positive weighs 1 (plain multi-positive InfoNCE)
    graded_pairs: bool = True
    relevance_strong_group: float = Relevance.strong_group
    relevance_strong_attribute: float = Relevance.strong_attribute
    relevance_medium: float = Relevance.medium
    relevance_weak: float = Relevance.weak
    contradiction_factor: float = Relevance.contradiction_factor
    bank_refresh_steps: int = 50  # extra columns come from embeddings at most this many steps old; 0: fresh
    # loss weights
    w_contrastive: float = 1.0
    w_attribute: float = 0.3
    w_fusion: float = 0.1  # t2f term that learns the fusion weight (only with learn_fusion)
    neckline_weight: float = 2.0  # neckline head's weight among the attribute heads (others 1)
    # sampler
    weak_categories: str = ",".join(SamplerConfig.weak_categories)
    weak_category_factor: float = SamplerConfig.weak_category_factor
    rare_materials: str = ",".join(SamplerConfig.rare_materials)
    rare_material_factor: float = SamplerConfig.rare_material_factor
    neckline_known_factor: float = SamplerConfig.neckline_known_factor
    dominant_groups: str = ",".join(f"{c}={v}" for c, v in SamplerConfig.dominant_groups)
    dominant_cap: float = SamplerConfig.dominant_cap
    # checkpoints, validation, logging
    checkpoint_every: int = 1  # epochs
    # the validation catalog (which picks the best epoch and fits the late-fusion weight): "val", the val
    # items themselves, none trained on; "train", a sample of training items, which rewards recalling
    # their labels (see protocol.training.validation)
    val_catalog: str = CATALOG_SPLITS[0]
    val_max_catalog: int = 5000
    val_max_queries: int = 500
    primary_metric: str = "t2i.neckline.p10"
    log_every: int = 50  # steps between step-metric logs
    # torch threads while training; None leaves torch's setting. On a CPU shared with other busy
    # processes 1 is far safer (OpenMP threads spin-wait on descheduled peers: 10x slower measured
    # at load 6 on 2 cores); on an idle one 2 threads were ~1.3x faster (benchmarks/bench_train.py).
    num_threads: int | None = None

    def __post_init__(self) -> None:
        positive = ("lr", "epochs", "batch_size", "hidden_dim", "checkpoint_every", "val_max_catalog",
                    "val_max_queries", "log_every", "weak_category_factor", "rare_material_factor",
                    "neckline_known_factor")
        non_negative = ("weight_decay", "grad_clip", "n_hard_negatives", "w_contrastive", "w_attribute",
                        "w_fusion", "neckline_weight", "min_lr_ratio", "bank_refresh_steps", "patience")
        for name in positive:
            _check(self, name, lambda v: v > 0, "> 0")
        for name in non_negative:
            _check(self, name, lambda v: v >= 0, ">= 0")
        for name in ("epochs", "batch_size", "hidden_dim", "checkpoint_every", "val_max_catalog",
                     "val_max_queries", "log_every", "n_hard_negatives", "bank_refresh_steps", "seed", "patience"):
            _check(self, name, lambda v: float(v).is_integer(), "an integer")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (in-batch negatives), got {self.batch_size}")
        _check(self, "dropout", lambda v: 0 <= v < 1, "in [0, 1)")
        _check(self, "fusion_weight", lambda v: 0 < v < 1, "in (0, 1)")
        _check(self, "warmup_fraction", lambda v: 0 <= v < 1, "in [0, 1)")
        _check(self, "min_lr_ratio", lambda v: v <= 1, "<= 1")
        _check(self, "dominant_cap", lambda v: 0 < v <= 1, "in (0, 1]")
        _check(self, "min_group_confidence", lambda v: 0 <= v <= 1, "in [0, 1]")
        if self.val_catalog not in CATALOG_SPLITS:
            raise ValueError(f"val_catalog must be one of {CATALOG_SPLITS}, got {self.val_catalog!r}")
        if self.head not in ("mlp", "linear"):
            raise ValueError(f"head must be 'mlp' or 'linear', got {self.head!r}")
        if self.steps_per_epoch is not None:
            _check(self, "steps_per_epoch", lambda v: v >= 1 and float(v).is_integer(), "None or an integer >= 1")
        if self.num_threads is not None:
            _check(self, "num_threads", lambda v: v >= 1 and float(v).is_integer(), "None or an integer >= 1")
        if self.w_contrastive == 0 and self.w_attribute == 0:
            raise ValueError("w_contrastive and w_attribute are both 0: nothing to train")
        if not self.primary_metric.strip():
            raise ValueError("primary_metric must name a validation metric, e.g. 't2i.neckline.p10'")
        self.sampler_config()  # parses the list fields, raising on a malformed one
        self.graded_relevance()  # checks the relevance weights, graded_pairs on or off

    def sampler_config(self) -> SamplerConfig:
        return SamplerConfig(
            balanced=self.balanced_sampling,
            weak_categories=_names(self.weak_categories),
            weak_category_factor=self.weak_category_factor,
            rare_materials=_names(self.rare_materials),
            rare_material_factor=self.rare_material_factor,
            neckline_known_factor=self.neckline_known_factor,
            dominant_groups=_column_values(self.dominant_groups),
            dominant_cap=self.dominant_cap,
        )

    def relevance(self) -> Relevance:
        """The soft-target weights of the positives: graded, or all 1 with graded_pairs off."""
        return self.graded_relevance() if self.graded_pairs else UNIFORM_RELEVANCE

    def graded_relevance(self) -> Relevance:
        return Relevance(self.relevance_strong_group, self.relevance_strong_attribute, self.relevance_medium,
                         self.relevance_weak, self.contradiction_factor)

    def head_weights(self) -> dict[str, float]:
        return {"neckline": self.neckline_weight}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}")
        return cls(**values)


def _check(cfg: TrainConfig, name: str, ok, requirement: str) -> None:
    value = getattr(cfg, name)
    valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and ok(value)
    if not valid:
        raise ValueError(f"{name} must be {requirement}, got {value!r}")


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _column_values(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for part in _names(text):
        column, sep, value = part.partition("=")
        if not sep or not column.strip() or not value.strip():
            raise ValueError(f"dominant_groups entries are column=value, got {part!r} in {text!r}")
        pairs.append((column.strip(), value.strip()))
    return tuple(pairs)
