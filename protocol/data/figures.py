"""What a person looks at first in a processed dataset: distributions and a grid of samples."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from protocol.data.images import load_image  # noqa: E402

DISTRIBUTION_COLUMNS = ("category2", "material", "neckline", "pattern", "sleeve")


def distribution_tables(meta: pd.DataFrame, columns=DISTRIBUTION_COLUMNS) -> dict[str, pd.DataFrame]:
    """Per column: value x split item counts, with a total and the share of all items."""
    tables = {}
    for col in columns:
        counts = pd.crosstab(meta[col], meta["split"])
        counts["total"] = counts.sum(axis=1)
        counts["share"] = (counts["total"] / len(meta)).round(4)
        tables[col] = counts.sort_values("total", ascending=False).reset_index().rename(columns={col: "value"})
    return tables


def sample_grid(dataset, meta: pd.DataFrame, n: int = 16, seed: int = 0, cols: int = 4):
    """A grid of `n` random items with their category and grounded attributes under each."""
    rows = meta.sample(n=min(n, len(meta)), random_state=seed).index.tolist()
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3 * cols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        item = meta.loc[row]
        ax.imshow(load_image(dataset[int(row)]["image"]))
        ax.set_title(
            f"{item['item_id']} ({item['split']})\n{item['category2']} | {item['material']} | {item['pattern']}\n"
            f"neck: {item['neckline']} | sleeve: {item['sleeve']}",
            fontsize=7,
        )
    fig.tight_layout()
    return fig
