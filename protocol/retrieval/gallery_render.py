"""Drawing a gallery: one PIL image of query cells and top-10 thumbnails, hit/miss labels under each.

Every figure is a grid: one row per ranking, the first cell shows the query (its text,
or its image, plus its attributes), the next cells the ranked catalog items. Under each
thumbnail one small label per attribute shows the result's value: green when it matches
the query, red when it does not, grey when the query's value is not scored (unknown,
or graphic for category), using the same rules as the metrics.

Each gallery is composed as one PIL image (thumbnails pasted, labels and text drawn
with ImageDraw in DejaVu Sans), which is much faster than one matplotlib Axes per cell.
It is returned as a `matplotlib.figure.Figure` with that image in its single Axes, sized
so that saving at the default dpi writes the composed pixels unchanged; the figure is
drawn with the Agg renderer and never registered with pyplot, so no global backend is
touched; the caller saves or logs it. `load_image(item_id) -> PIL.Image` supplies the pictures.
Which queries a gallery shows is chosen in `protocol.retrieval.gallery`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.transforms import Affine2D
from PIL import Image, ImageDraw, ImageFont, ImageOps

from protocol.retrieval.metrics import attribute_column, attribute_relevance, known_values

ImageLoader = Callable[[str], Image.Image]
N_RESULTS = 10
THUMB_PX = 128
HIT, MISS, NOT_SCORED = "#2e7d32", "#c62828", "#9e9e9e"
# Pixel layout of the composed image (saved at DPI, one image pixel per output pixel).
DPI = 100
MARGIN, PAD = 12, 6
QUERY_W, QUERY_GAP, CELL_GAP = 208, 12, 6  # query column width, gap after it, gap between results
TITLE_H, LEGEND_H = 28, 30  # title line, legend line (+ space below it)
HEADER_H = 30  # above each row's cells: label and id (query), rank and id (results)
CHIP_TOP, CHIP_STEP, CHIP_H, CHIP_W = 5, 17, 15, THUMB_PX - 12
ROW_GAP = 16
TITLE_PX, TEXT_PX, SMALL_PX = 17, 13, 11  # font sizes in pixels
TEXT_LINE, QUERY_LINES = 16, 5
BACKGROUND, INK, FACT_INK, RULE = "white", "#212121", "#424242", "#e0e0e0"
FRAME, CELL_FILL, QUERY_FILL = "#616161", "#f5f5f5", "#fafafa"


@dataclass
class GalleryRow:
    query_row: int  # row of queries_meta
    ranking: np.ndarray  # catalog rows, best first (-1 = none)
    label: str = ""  # shown above the query cell


def draw_gallery(
    rows: Sequence[GalleryRow],
    queries_meta: pd.DataFrame,
    catalog_meta: pd.DataFrame,
    load_image: ImageLoader,
    attributes: Sequence[str],
    *,
    query_as: str = "text",
    title: str | None = None,
) -> Figure:
    """One grid row per GalleryRow: the query cell, then up to N_RESULTS thumbnails.

    The grid is composed as one PIL image (see `compose_gallery`) and returned in a
    single-Axes figure whose size is the image's at DPI, so saving it at that dpi
    (savefig's default here) writes the composed pixels unchanged. The figure's
    `gallery` attribute holds the GalleryImage (image, layout, rows) it shows."""
    gallery = compose_gallery(rows, queries_meta, catalog_meta, load_image, attributes, query_as=query_as, title=title)
    return _figure(gallery)


@dataclass(frozen=True)
class GalleryLayout:
    """Pixel geometry of a gallery image; boxes are (left, top, right, bottom), right/bottom exclusive."""

    n_rows: int
    n_results: int
    n_attributes: int
    titled: bool = True

    @property
    def top(self) -> int:  # y of the first row: below the title and the legend
        return MARGIN + (TITLE_H if self.titled else 0) + LEGEND_H

    @property
    def row_height(self) -> int:
        return HEADER_H + THUMB_PX + CHIP_TOP + CHIP_STEP * self.n_attributes + ROW_GAP

    @property
    def size(self) -> tuple[int, int]:
        width = 2 * MARGIN + QUERY_W + QUERY_GAP + self.n_results * THUMB_PX + max(0, self.n_results - 1) * CELL_GAP
        return width, self.top + max(1, self.n_rows) * self.row_height - ROW_GAP + MARGIN

    def column_x(self, column: int) -> int:
        """Left x of a column: 0 is the query, j + 1 the j-th result."""
        if column == 0:
            return MARGIN
        return MARGIN + QUERY_W + QUERY_GAP + (column - 1) * (THUMB_PX + CELL_GAP)

    def thumb_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """Where the column's picture goes (the query's text box starts here too)."""
        width = QUERY_W if column == 0 else THUMB_PX
        x, y = self.column_x(column), self.top + row * self.row_height + HEADER_H
        return x, y, x + width, y + THUMB_PX

    def chip_box(self, row: int, result: int, line: int) -> tuple[int, int, int, int]:
        """The label chip of `result` (0-based rank) for the line-th attribute."""
        x = self.column_x(result + 1) + (THUMB_PX - CHIP_W) // 2
        y = self.top + row * self.row_height + HEADER_H + THUMB_PX + CHIP_TOP + line * CHIP_STEP
        return x, y, x + CHIP_W, y + CHIP_H


@dataclass
class GalleryImage:
    """A composed gallery: the picture, where its cells are, and the rows it shows (in order)."""

    image: Image.Image  # RGB
    layout: GalleryLayout
    rows: list[GalleryRow]


def compose_gallery(
    rows: Sequence[GalleryRow],
    queries_meta: pd.DataFrame,
    catalog_meta: pd.DataFrame,
    load_image: ImageLoader,
    attributes: Sequence[str],
    *,
    query_as: str = "text",
    title: str | None = None,
) -> GalleryImage:
    """The gallery as one RGB image: title and legend, then one row per GalleryRow."""
    if query_as not in ("text", "image"):
        raise ValueError(f"query_as must be 'text' or 'image', got {query_as!r}")
    rows = list(rows)
    n_results = min(N_RESULTS, max((len(r.ranking) for r in rows), default=N_RESULTS))
    layout = GalleryLayout(len(rows), n_results, len(attributes), titled=bool(title))
    canvas = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        font = _font(TITLE_PX, bold=True)
        draw.text((canvas.width / 2, MARGIN), _fit(draw, title, font, canvas.width - 2 * MARGIN), font=font, fill=INK,
                  anchor="ma")
    _draw_legend(canvas, draw, layout, attributes)
    if not rows:
        draw.text((canvas.width / 2, layout.top + THUMB_PX / 2), "no queries to show", font=_font(TEXT_PX), fill=INK,
                  anchor="mm")
    for r, row in enumerate(rows):
        if r:
            y = layout.top + r * layout.row_height - ROW_GAP // 2
            draw.line([(MARGIN, y), (canvas.width - MARGIN, y)], fill=RULE)
        query = queries_meta.iloc[row.query_row]
        ranking = np.asarray(row.ranking)[:n_results]
        marks = _marks(query, ranking, catalog_meta, attributes)
        facts = [_fact(query, a, m) for a, m in zip(attributes, marks)]
        _draw_query(canvas, draw, layout, r, query, row.label, facts, load_image, query_as)
        for j in range(n_results):
            index = int(ranking[j]) if j < len(ranking) else -1
            if index >= 0:
                _draw_result(canvas, draw, layout, r, j, str(catalog_meta["item_id"].iloc[index]),
                             [m[j] for m in marks], load_image)
    return GalleryImage(canvas, layout, rows)


def _figure(gallery: GalleryImage) -> Figure:
    """A figure of exactly the image's pixel size at DPI, the image filling its one Axes."""
    width, height = gallery.image.size
    # The epsilon keeps int(figsize * dpi), which Agg uses for the canvas, from rounding down a pixel.
    fig = Figure(figsize=((width + 1e-3) / DPI, (height + 1e-3) / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    image = _PixelImage(ax, interpolation="antialiased", origin="upper")
    image.set_data(np.asarray(gallery.image.convert("RGBA")))
    image.set_extent((-0.5, width - 0.5, height - 0.5, -0.5))
    ax.add_image(image)
    fig.gallery = gallery
    return fig


class _PixelImage(AxesImage):
    """An RGBA uint8 AxesImage that, when its Axes spans exactly its pixel size (the figure
    drawn at DPI), hands its pixels to the renderer unchanged instead of going through
    matplotlib's resampling pass (the bulk of savefig's time for a large image); drawn at
    any other size (another dpi), it is resampled as usual."""

    def make_image(self, renderer, magnification=1.0, unsampled=False):
        pixels, box = self._A, self.axes.bbox
        if (not unsampled and magnification == 1.0 and box.x0 == 0 and box.y0 == 0
                and (round(box.width), round(box.height)) == (pixels.shape[1], pixels.shape[0])):
            return np.ascontiguousarray(pixels[::-1]), 0.0, 0.0, Affine2D()  # Agg wants the bottom row first
        return super().make_image(renderer, magnification, unsampled)


def _marks(query: pd.Series, ranking: np.ndarray, catalog_meta: pd.DataFrame, attributes: Sequence[str]):
    """Per attribute, per result: (label text, colour)."""
    ranking = np.asarray(ranking)[None, :]
    out = []
    for attribute in attributes:
        column = attribute_column(attribute)
        hits = attribute_relevance([query[column]], catalog_meta[column], ranking, attribute)[0]
        scored = known_values([query[column]], attribute)[0]
        values = [str(catalog_meta[column].iloc[i]) if i >= 0 else "" for i in ranking[0]]
        out.append([(v, HIT if h else MISS) if scored else (v, NOT_SCORED) for v, h in zip(values, hits)])
    return out


def _fact(query: pd.Series, attribute: str, marks) -> str:
    """'neckline: v-neck (3/10)': the query's value and how many shown results share it."""
    value = query[attribute_column(attribute)]
    if not known_values([value], attribute)[0]:
        return f"{attribute}: {value}"
    return f"{attribute}: {value}  ({sum(colour == HIT for _, colour in marks)}/{len(marks)})"


def _draw_legend(canvas: Image.Image, draw: ImageDraw.ImageDraw, layout: GalleryLayout,
                 attributes: Sequence[str]) -> None:
    """'[hit] [miss] [not scored]  labels under each result, top to bottom: a / b / c' on one line."""
    font = _font(SMALL_PX)
    x, y = MARGIN, MARGIN + (TITLE_H if layout.titled else 0)
    for name, colour in (("hit", HIT), ("miss", MISS), ("not scored", NOT_SCORED)):
        width = int(draw.textlength(name, font=font)) + 12
        _chip(canvas, (x, y, x + width, y + CHIP_H), name, colour)
        x += width + 6
    note = f"labels under each result, top to bottom: {' / '.join(attributes)} (the result's value)"
    draw.text((x + 6, y + CHIP_H / 2), _fit(draw, note, font, canvas.width - MARGIN - x - 6), font=font, fill=INK,
              anchor="lm")


def _draw_query(canvas, draw, layout: GalleryLayout, r: int, query: pd.Series, label: str, facts: list[str],
                load_image: ImageLoader, query_as: str) -> None:
    """The query cell: label and id above, its text (or image) and its attribute values with hits in the row."""
    x0, y0, x1, y1 = layout.thumb_box(r, 0)
    item_id, small, bold = str(query["item_id"]), _font(SMALL_PX), _font(TEXT_PX, bold=True)
    if label:
        draw.text((x0, y0 - HEADER_H), _fit(draw, label, bold, QUERY_W), font=bold, fill=INK)
    draw.text((x0, y0 - 3), _fit(draw, item_id, small, QUERY_W), font=small, fill=INK, anchor="ld")
    facts_y = y1 + CHIP_TOP  # one fact per chip line, level with the chips
    if query_as == "image":
        thumb = _thumbnail(load_image(item_id))
        tx = x0 + (QUERY_W - THUMB_PX) // 2
        _paste(canvas, draw, thumb, (tx, y0, tx + THUMB_PX, y1))
    else:
        bottom = facts_y + CHIP_STEP * len(facts)
        draw.rectangle((x0, y0, x1 - 1, bottom - 1), fill=QUERY_FILL, outline=FRAME)
        text = str(query.get("text", "") or query.get("title", ""))
        font = _font(TEXT_PX)
        lines = _wrap(draw, text, font, QUERY_W - 2 * PAD, max_lines=QUERY_LINES)
        for i, line in enumerate(lines):
            draw.text((x0 + PAD, y0 + PAD + i * TEXT_LINE), line, font=font, fill=INK)
    for i, fact in enumerate(facts):
        draw.text((x0 + PAD, facts_y + i * CHIP_STEP + CHIP_H / 2), _fit(draw, fact, small, QUERY_W - 2 * PAD),
                  font=small, fill=FACT_INK, anchor="lm")


def _draw_result(canvas, draw, layout: GalleryLayout, r: int, j: int, item_id: str, marks,
                 load_image: ImageLoader) -> None:
    """Rank and id above the thumbnail, one coloured chip per attribute below it."""
    x0, y0, x1, y1 = layout.thumb_box(r, j + 1)
    font = _font(SMALL_PX)
    draw.text(((x0 + x1) / 2, y0 - 3), _fit(draw, f"{j + 1}. {item_id}", font, THUMB_PX + CELL_GAP - 2),
              font=font, fill=INK, anchor="md")
    _paste(canvas, draw, _thumbnail(load_image(item_id)), (x0, y0, x1, y1))
    for line, (value, colour) in enumerate(marks):
        _chip(canvas, layout.chip_box(r, j, line), value, colour)


def _chip(canvas: Image.Image, box: tuple[int, int, int, int], text: str, colour: str) -> None:
    canvas.paste(_chip_image(text, colour, box[2] - box[0], box[3] - box[1]), box[:2])


@lru_cache(maxsize=1024)
def _chip_image(text: str, colour: str, width: int, height: int) -> Image.Image:
    """A rounded label in colour with text in white, cut to fit; cached, as values repeat a lot."""
    chip = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(chip)
    draw.rounded_rectangle((0, 0, width - 1, height - 1), radius=3, fill=colour)
    font = _font(SMALL_PX)
    draw.text((width / 2, height / 2), _fit(draw, text, font, width - 6), font=font, fill="white", anchor="mm")
    return chip


def _paste(canvas: Image.Image, draw, thumb: Image.Image, box: tuple[int, int, int, int]) -> None:
    """The thumbnail centred in box, on a light cell with a thin frame."""
    x0, y0, x1, y1 = box
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=CELL_FILL)
    canvas.paste(thumb, (x0 + (x1 - x0 - thumb.width) // 2, y0 + (y1 - y0 - thumb.height) // 2))
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=FRAME)


def _thumbnail(image: Image.Image) -> Image.Image:
    """The picture scaled (up or down) to fit a THUMB_PX square, keeping its aspect ratio."""
    return ImageOps.contain(image.convert("RGB"), (THUMB_PX, THUMB_PX))


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """text, cut with an ellipsis to fit width pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "\u2026", font=font) > width:
        text = text[:-1]
    return text.rstrip() + "\u2026"


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: float, max_lines: int) -> list[str]:
    """Greedy word wrap to width pixels; past max_lines the last line ends with ' ...'."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(_fit(draw, word, font, width))
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and draw.textlength(last + " ...", font=font) > width:
            last = last.rsplit(" ", 1)[0] if " " in last else last[:-1]
        lines[-1] = last + " ..."
    return lines


@lru_cache(maxsize=None)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib) at size pixels; Pillow's default font if it cannot be read."""
    try:
        properties = font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal")
        return ImageFont.truetype(font_manager.findfont(properties), size)
    except OSError:
        return ImageFont.load_default(size)
