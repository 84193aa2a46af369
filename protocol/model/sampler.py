"""Balanced batches of training anchors: more of what the baseline gets wrong, less of what it has plenty of.

Each anchor row is drawn with a weight: x `weak_category_factor` for a weak category
(cardigans, shorts), x `rare_material_factor` for a rare material (denim, leather),
x `neckline_known_factor` when its neckline is known. Then dominant groups (tees, cotton)
are held to `dominant_cap` of a batch twice over: their weights are scaled down until
their expected share is at most the cap, and any batch that still draws more of them
than the cap allows has the excess replaced by items of no dominant group.
`balanced=False` gives plain shuffled epochs (every anchor once, no caps).

A whole epoch is drawn at once from an RNG seeded by (seed, epoch), so an epoch is a
pure function of them and resuming needs only (epoch, position). Graphic items
(category2 "graphic") are a pattern signal, never a category: they never count as a weak
category, and naming "graphic" as one is an error.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd

from protocol.data.graphic_policy import GRAPHIC, has_category
from protocol.data.hard_negatives import known_mask
from protocol.data.schema import require_columns

logger = logging.getLogger(__name__)

CAP_ITERATIONS = 100  # scaling one capped group moves the others' shares; this many rounds always settle it


@dataclass(frozen=True)
class SamplerConfig:
    balanced: bool = True
    weak_categories: tuple[str, ...] = ("cardigans", "shorts")
    weak_category_factor: float = 3.0
    rare_materials: tuple[str, ...] = ("denim", "leather")
    rare_material_factor: float = 3.0
    neckline_known_factor: float = 2.0
    dominant_groups: tuple[tuple[str, str], ...] = (("category2", "tees"), ("material", "cotton"))  # (column, value)
    dominant_cap: float = 0.3

    def __post_init__(self) -> None:
        for name in ("weak_category_factor", "rare_material_factor", "neckline_known_factor"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"SamplerConfig.{name} must be > 0, got {value!r}")
        if not 0 < self.dominant_cap <= 1:
            raise ValueError(f"SamplerConfig.dominant_cap must be in (0, 1], got {self.dominant_cap!r}")
        if any(c.strip().lower() == GRAPHIC for c in self.weak_categories):
            raise ValueError(
                "SamplerConfig.weak_categories names 'graphic', which is a pattern signal, not a category "
                "(DESIGN graphic policy): remove it"
            )
        for group in self.dominant_groups:
            if len(group) != 2:
                raise ValueError(f"SamplerConfig.dominant_groups entries are (column, value) pairs, got {group!r}")

    def groups(self) -> list[tuple[str, str, str]]:
        """(name, column, value) of every group the mix reports; value "known" means any known value."""
        named = [(f"category2={c}", "category2", c) for c in self.weak_categories]
        named += [(f"material={m}", "material", m) for m in self.rare_materials]
        named.append(("neckline=known", "neckline", "known"))
        named += [(f"{col}={val}", col, val) for col, val in self.dominant_groups]
        seen, unique = set(), []
        for g in named:
            if g[0] not in seen:
                seen.add(g[0])
                unique.append(g)
        return unique


def group_membership(meta: pd.DataFrame, config: SamplerConfig) -> tuple[list[str], np.ndarray]:
    """(group names, [len(meta), G] bool): which rows belong to each group of `config.groups()`."""
    groups = config.groups()
    require_columns(meta, sorted({col for _, col, _ in groups}), "sampler meta", "the processed dataset has them")
    columns = []
    for _, column, value in groups:
        values = meta[column]
        if column == "neckline" and value == "known":
            columns.append(known_mask(values))
        elif column == "category2":
            columns.append(has_category(values.to_numpy()) & (values == value).to_numpy())
        else:
            columns.append((values.astype(str) == value).to_numpy())
    return [g[0] for g in groups], np.stack(columns, axis=1) if columns else np.zeros((len(meta), 0), bool)


def batch_mix(meta: pd.DataFrame, batch_rows: np.ndarray, config: SamplerConfig = SamplerConfig()) -> dict[str, float]:
    """Share of each group among the given rows of `meta` (positional rows)."""
    names, member = group_membership(meta.iloc[np.asarray(batch_rows).ravel()], config)
    return dict(zip(names, member.mean(axis=0).tolist() if len(member) else [0.0] * len(names)))


class BalancedBatchSampler:
    """Epochs of `batches_per_epoch` batches of `batch_size` anchor rows (positional rows of `meta`)."""

    def __init__(
        self,
        meta: pd.DataFrame,
        rows: np.ndarray,
        batch_size: int,
        batches_per_epoch: int,
        config: SamplerConfig = SamplerConfig(),
        seed: int = 0,
    ):
        self.rows = np.asarray(rows, dtype=np.int64)
        if len(self.rows) == 0:
            raise ValueError("the sampler got no anchor rows: the train split is empty")
        if batch_size < 1 or batches_per_epoch < 1:
            raise ValueError(f"batch_size and batches_per_epoch must be >= 1, got {batch_size}, {batches_per_epoch}")
        self.batch_size = int(batch_size)
        self.batches_per_epoch = int(batches_per_epoch)
        self.config = config
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0
        self.group_names, self.member = group_membership(meta.iloc[self.rows], config)
        self.capped = np.array([name in {f"{c}={v}" for c, v in config.dominant_groups} for name in self.group_names])
        self.probs = self._probabilities() if config.balanced else np.full(len(self.rows), 1 / len(self.rows))
        self.cap_count = int(math.floor(config.dominant_cap * self.batch_size))

    # ----------------------------------------------------------------------------- weights

    def _probabilities(self) -> np.ndarray:
        c, names = self.config, self.group_names
        weights = np.ones(len(self.rows))
        weak = self.member[:, [names.index(f"category2={v}") for v in c.weak_categories]].any(axis=1)
        rare = self.member[:, [names.index(f"material={v}") for v in c.rare_materials]].any(axis=1)
        weights[weak] *= c.weak_category_factor
        weights[rare] *= c.rare_material_factor
        weights[self.member[:, names.index("neckline=known")]] *= c.neckline_known_factor
        probs = weights / weights.sum()
        return self._cap_shares(probs)

    def _cap_shares(self, probs: np.ndarray) -> np.ndarray:
        """Scale capped groups down until each one's expected share is <= the cap."""
        capped = self.member[:, self.capped]
        free = ~capped.any(axis=1)
        if capped.shape[1] == 0:
            return probs
        if not free.any():
            logger.warning("every anchor is in a dominant group %s: the %.0f%% cap cannot be applied",
                           list(self.config.dominant_groups), 100 * self.config.dominant_cap)
            return probs
        cap = self.config.dominant_cap
        for _ in range(CAP_ITERATIONS):
            shares = probs @ capped
            if (shares <= cap + 1e-9).all():
                break
            g = int(np.argmax(shares - cap))
            s = shares[g]
            # Factor f on the group's mass s gives share f*s / (f*s + 1 - s) == cap.
            probs = np.where(capped[:, g], probs * cap * (1 - s) / (s * (1 - cap)), probs)
            probs = probs / probs.sum()
        return probs

    def target_shares(self) -> dict[str, float]:
        """Expected share of each group per batch under the sampling distribution."""
        return dict(zip(self.group_names, (self.probs @ self.member).tolist()))

    # ----------------------------------------------------------------------------- epochs

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """[batches_per_epoch, batch_size] anchor rows of `epoch`; a pure function of (seed, epoch)."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        n_total = self.batches_per_epoch * self.batch_size
        if self.config.balanced:
            picks = rng.choice(len(self.rows), size=(self.batches_per_epoch, self.batch_size), p=self.probs)
            picks = self._enforce_caps(picks, rng)
        else:
            n_perms = -(-n_total // len(self.rows))
            picks = np.concatenate([rng.permutation(len(self.rows)) for _ in range(n_perms)])[:n_total]
            picks = picks.reshape(self.batches_per_epoch, self.batch_size)
        return self.rows[picks]

    def _enforce_caps(self, picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Replace members of a capped group beyond the cap in each batch with items of no capped group."""
        free = np.flatnonzero(~self.member[:, self.capped].any(axis=1))
        if len(free) == 0:
            return picks
        free_probs = self.probs[free] / self.probs[free].sum()
        for g in np.flatnonzero(self.capped):
            in_group = self.member[picks, g]
            over = in_group & (np.cumsum(in_group, axis=1) > self.cap_count)
            if over.any():
                # Replacements belong to no capped group, so no other group's count grows.
                picks[over] = free[rng.choice(len(free), size=int(over.sum()), p=free_probs)]
        return picks

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[np.ndarray]:
        """The remaining batches of the current epoch; afterwards the sampler stands at the next epoch."""
        batches = self.epoch_batches(self.epoch)
        while self.position < self.batches_per_epoch:
            batch = batches[self.position]
            self.position += 1
            yield batch
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        # The epoch's RNG is derived from (seed, epoch), so these three ints are the whole RNG state.
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state has seed {state['seed']} but this sampler has seed {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    # ----------------------------------------------------------------------------- reporting

    def mix_table(self, batches: np.ndarray) -> pd.DataFrame:
        """group, target_share, achieved_share over the given batches (rows of `meta`)."""
        position_of = pd.Index(self.rows).get_indexer(np.asarray(batches).ravel())
        achieved = self.member[position_of].mean(axis=0)
        target = self.target_shares()
        return pd.DataFrame({
            "group": self.group_names,
            "target_share": [target[g] for g in self.group_names],
            "achieved_share": achieved.tolist(),
            "capped": self.capped.tolist(),
        })
