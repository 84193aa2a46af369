"""The synthetic catalog's product photos: one garment, flat and front-on, on a plain studio
background, framed alike in every shot as a shop's packshots are.

Each attribute is drawn where a photo shows it, large, with contrast of one sign and in the same
place from shot to shot, because the embedded default's backbone (a random-init ViT-B-32) keeps
only bold, steady cues: with the framing jittered by 5% a linear probe of its features could not
read the neckline (`benchmarks/probe_features.py`; docs/ARCHITECTURE.md, "probe"). Category is the
silhouette with its fronts, plackets, pockets and ribbed hems; the neckline an opening whose
inside is always darker and whose rib band always lighter than the garment (small crew, deep V,
wide scoop, pointed collar, a turtleneck above the shoulders, a hood); sleeves none, short or
long; the material its weave and how it takes the light (matte jersey, soft sheen, slub and
creases, chunky knit, a silk sheen band, twill with gold topstitching, leather highlights and
dark edges); the pattern a second colour (stripes, checks, dots, flowers, a chest print).
"""

from __future__ import annotations

import functools
import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

if TYPE_CHECKING:  # the sampler imports this module; the dataclass is only a type here
    from protocol.data.synthetic import Product

COLOR_RGB = {"black": (32, 32, 36), "white": (238, 237, 232), "grey": (128, 128, 134), "navy": (30, 42, 92),
             "blue": (52, 112, 200), "red": (198, 36, 44), "green": (44, 138, 72), "yellow": (232, 196, 44),
             "pink": (238, 148, 178), "beige": (212, 188, 148), "brown": (118, 74, 42), "purple": (118, 62, 158)}

# Framing: a shop shoots every product the same way; views differ by a few pixels (and the
# second is mirrored). With scale 0.84-1.0 and 5% shifts, the probe read neckline from these
# drawings at 0.43 [0.35, 0.52] against a majority class of 0.37: a neckline that moves
# across patch borders from shot to shot is lost to the backbone.
SCALE = (0.96, 1.0)
SHIFT_X, SHIFT_Y = 0.015, 0.012

# Garment geometry in unit coordinates (x right, y down), before per-view jitter.
NECK_Y, NECK_HALF = 0.20, 0.09
HEM_Y = {"tees": 0.84, "shirts": 0.86, "sweaters": 0.84, "cardigans": 0.86, "jackets": 0.88}
CHEST = (0.5, 0.52)

SHADOW = 0.22       # the inside of an opening: this fraction of the garment colour
BAND_LIGHT = 0.38   # a rib band: the garment colour mixed this far towards white


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


class _Canvas:
    """Unit-coordinate drawing onto three masks (garment, its rib bands, its shadowed
    inside) and a list of detail strokes drawn last."""

    def __init__(self, size: int, scale: float, dx: float, dy: float, flip: bool):
        self.size, self.scale, self.dx, self.dy, self.flip = size, scale, dx, dy, flip
        self.mask, self.band, self.inner = (Image.new("L", (size, size), 0) for _ in range(3))
        self.m, self.b, self.i = ImageDraw.Draw(self.mask), ImageDraw.Draw(self.band), ImageDraw.Draw(self.inner)
        self.lines: list[tuple] = []   # (kind, points, width, colour role)
        self.width = max(1, round(size / 100))

    def pt(self, x: float, y: float) -> tuple[float, float]:
        if self.flip:
            x = 1.0 - x
        s = self.size
        return (((x - 0.5) * self.scale + 0.5 + self.dx) * s, ((y - 0.5) * self.scale + 0.5 + self.dy) * s)

    def pts(self, points) -> list[tuple[float, float]]:
        return [self.pt(x, y) for x, y in points]

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        (ax, ay), (bx, by) = self.pt(x0, y0), self.pt(x1, y1)
        return [min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)]

    def _shape(self, draw: ImageDraw.ImageDraw, points=None, ellipse=None, fill: int = 255) -> None:
        if ellipse is not None:
            draw.ellipse(self.box(*ellipse), fill=fill)
        else:
            draw.polygon(self.pts(points), fill=fill)

    def body(self, points=None, ellipse=None) -> None:
        self._shape(self.m, points, ellipse)

    def mirrored(self, points) -> None:
        self.body(points)
        self.body([(1.0 - x, y) for x, y in points])

    def rib(self, points=None, ellipse=None, over: bool = False) -> None:
        self._shape(self.b, points, ellipse)
        if over:  # it lies on the shadows drawn so far
            self._shape(self.i, points, ellipse, fill=0)

    def hole(self, points=None, ellipse=None) -> None:
        self._shape(self.i, points, ellipse)

    def stroke(self, points, width: int | None = None, role: str = "dark") -> None:
        self.lines.append(("line", self.pts(points), width or self.width, role))

    def outline(self, points, role: str = "dark") -> None:
        self.lines.append(("polygon", self.pts(points), self.width, role))

    def button(self, x: float, y: float, r: float = 0.014) -> None:
        self.lines.append(("button", self.box(x - r, y - r, x + r, y + r), self.width, "dark"))


def _draw_top(c: _Canvas, p: Product, hem: float, half_hem: float, shoulder: float) -> None:
    if p.sleeve == "sleeveless":
        c.mirrored([(0.5, NECK_Y - 0.01), (0.5 - 0.175, NECK_Y - 0.01), (0.5 - 0.15, 0.33),
                    (0.5 - 0.17, 0.42), (0.5 - half_hem, hem), (0.5, hem)])
        return
    c.mirrored([(0.5, NECK_Y), (0.5 - NECK_HALF, NECK_Y), (0.5 - shoulder, 0.25),
                (0.5 - half_hem, hem), (0.5, hem)])
    if p.sleeve == "short":
        c.mirrored([(0.5 - shoulder, 0.25), (0.5 - shoulder - 0.13, 0.37), (0.5 - shoulder - 0.07, 0.47),
                    (0.5 - shoulder + 0.02, 0.41)])
    else:
        c.mirrored([(0.5 - shoulder, 0.25), (0.5 - shoulder - 0.12, 0.80), (0.5 - shoulder - 0.04, 0.82),
                    (0.5 - shoulder + 0.02, 0.42)])
        for side in (-1, 1):  # ribbed cuff
            x0, x1 = 0.5 + side * (shoulder + 0.12), 0.5 + side * (shoulder + 0.04)
            c.rib([(x0, 0.80), (x1, 0.82), (x1 + side * 0.004, 0.78), (x0 + side * 0.003, 0.76)])


def _draw_neckline(c: _Canvas, p: Product) -> float:
    """Draw the neckline; returns the y where a front opening (cardigan, shirt, jacket) starts."""
    y, w = NECK_Y, NECK_HALF
    if p.neckline == "crew":      # small, close round opening with a rib band
        c.rib(ellipse=(0.5 - w - 0.03, y - 0.09, 0.5 + w + 0.03, y + 0.10))
        c.hole(ellipse=(0.5 - w, y - 0.06, 0.5 + w, y + 0.065))
        return y + 0.10
    if p.neckline == "v-neck":    # deep V to mid-chest
        depth = 0.24
        c.rib([(0.5 - w - 0.035, y - 0.01), (0.5 + w + 0.035, y - 0.01), (0.5, y + depth + 0.05)])
        c.hole([(0.5 - w, y - 0.01), (0.5 + w, y - 0.01), (0.5, y + depth)])
        return y + depth + 0.05
    if p.neckline == "scoop":     # wide and low U
        c.rib(ellipse=(0.5 - 0.16, y - 0.16, 0.5 + 0.16, y + 0.185))
        c.hole(ellipse=(0.5 - 0.14, y - 0.14, 0.5 + 0.14, y + 0.16))
        return y + 0.185
    if p.neckline == "collar":    # stand plus two large pointed flaps casting a shadow
        c.hole(ellipse=(0.5 - 0.065, y - 0.04, 0.5 + 0.065, y + 0.035))
        for side in (-1, 1):
            flap = [(0.5 + side * 0.10, y - 0.03), (0.5 + side * 0.004, y + 0.045),
                    (0.5 + side * 0.075, y + 0.16), (0.5 + side * 0.16, y + 0.05)]
            c.hole([(x + side * 0.012, yy + 0.018) for x, yy in flap])   # the flap's shadow
            c.rib(flap, over=True)
            c.outline(flap)
        return y + 0.05
    if p.neckline == "turtleneck":  # a folded tube standing above the shoulders
        c.body(_rect(0.5 - w - 0.01, y - 0.15, 0.5 + w + 0.01, y + 0.03))
        c.rib(_rect(0.5 - w - 0.015, y - 0.15, 0.5 + w + 0.015, y - 0.03))
        c.hole(ellipse=(0.5 - w, y - 0.175, 0.5 + w, y - 0.125))
        for k in range(-3, 4):
            c.stroke([(0.5 + k * w / 4, y - 0.14), (0.5 + k * w / 4, y + 0.02)])
        return y + 0.03
    if p.neckline == "hood":      # big hood behind the neck: shadowed lining, drawstrings
        c.body(ellipse=(0.5 - 0.18, y - 0.20, 0.5 + 0.18, y + 0.13))
        c.rib(ellipse=(0.5 - 0.125, y - 0.16, 0.5 + 0.125, y + 0.10))
        c.hole(ellipse=(0.5 - 0.105, y - 0.14, 0.5 + 0.105, y + 0.08))
        for side in (-1, 1):
            c.stroke([(0.5 + side * 0.035, y + 0.08), (0.5 + side * 0.045, y + 0.26)], c.width * 2, "light")
        return y + 0.10
    return y


def _draw_garment(c: _Canvas, p: Product) -> None:
    cat = p.category
    if cat in HEM_Y or cat == "dresses":
        if cat == "dresses":
            hem, half_hem = 0.95, 0.27
            _draw_top(c, p, 0.52, 0.14, 0.17)
            c.mirrored([(0.5, 0.48), (0.5 - 0.145, 0.48), (0.5 - half_hem, hem), (0.5, hem)])
            c.stroke([(0.36, 0.5), (0.64, 0.5)], c.width * 2)
        else:
            hem = HEM_Y[cat]
            wide = cat == "jackets"
            _draw_top(c, p, hem, 0.2 if wide else 0.18, 0.22 if wide else 0.2)
        opening = _draw_neckline(c, p)
        if cat == "cardigans":  # open front showing the inside, buttons beside it
            c.hole([(0.5 - 0.015, opening - 0.02), (0.5 + 0.015, opening - 0.02), (0.5 + 0.03, hem),
                    (0.5 - 0.03, hem)])
            for k in range(5):
                c.button(0.5 - 0.06, opening + 0.04 + k * (hem - opening - 0.08) / 4, 0.02)
        elif cat == "shirts":
            c.rib(_rect(0.5 - 0.025, opening, 0.5 + 0.025, hem))
            for k in range(4):
                c.button(0.5, opening + 0.05 + k * (hem - opening - 0.1) / 3, 0.013)
        elif cat == "jackets":
            c.stroke([(0.5, opening), (0.5, hem)], c.width * 3)
            for side in (-1, 1):
                c.outline(_rect(0.5 + side * 0.07, 0.6, 0.5 + side * 0.17, 0.72))
        if cat in ("sweaters", "cardigans", "jackets"):  # ribbed hem
            half = (0.2 if cat == "jackets" else 0.18) - 0.005
            c.rib(_rect(0.5 - half, hem - 0.05, 0.5 + half, hem))
    elif cat == "shorts":
        c.body([(0.30, 0.28), (0.70, 0.28), (0.74, 0.64), (0.53, 0.64), (0.5, 0.48), (0.47, 0.64), (0.26, 0.64)])
        c.rib([(0.30, 0.28), (0.70, 0.28), (0.705, 0.33), (0.295, 0.33)])
        c.stroke([(0.5, 0.33), (0.5, 0.42)], c.width * 2)
    elif cat == "trousers":
        c.body([(0.32, 0.08), (0.68, 0.08), (0.71, 0.95), (0.54, 0.95), (0.5, 0.36), (0.46, 0.95), (0.29, 0.95)])
        c.rib([(0.32, 0.08), (0.68, 0.08), (0.683, 0.13), (0.317, 0.13)])
        c.stroke([(0.5, 0.13), (0.5, 0.26)], c.width * 2)
    elif cat == "skirts":
        c.body([(0.36, 0.22), (0.64, 0.22), (0.77, 0.80), (0.23, 0.80)])
        c.rib([(0.36, 0.22), (0.64, 0.22), (0.645, 0.27), (0.355, 0.27)])


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


@functools.lru_cache(maxsize=32)
def _base_texture(material: str, size: int) -> np.ndarray:
    """A 2size x 2size luminance texture in about [-1, 1]; views crop it at random offsets."""
    n = 2 * size
    rng = np.random.default_rng(sum(map(ord, material)))  # the same weave for every seed
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    if material == "denim":   # twill: diagonal wale with light weft flecks
        period = max(3.0, size / 28)
        t = np.sin(2 * np.pi * (xx + yy) / period) * 0.8 + rng.normal(0, 0.35, (n, n))
    elif material == "wool":  # chunky knit: columns of V stitches
        period = max(4.0, size / 16)
        phase = np.abs((xx % period) / period - 0.5)
        t = 0.6 * np.sin(2 * np.pi * xx / period) + 0.6 * np.sin(2 * np.pi * (yy / (period * 0.7) + phase * 1.5))
    elif material == "linen":  # slub threads across and along
        rows = rng.normal(0, 1, n) * (1 + 2 * (rng.random(n) < 0.08))
        cols = rng.normal(0, 1, n) * (1 + 2 * (rng.random(n) < 0.08))
        t = 0.45 * rows[:, None] + 0.45 * cols[None, :]
    elif material == "cotton":  # jersey: fine matte noise
        t = rng.normal(0, 0.35, (n, n))
    else:  # smooth fabrics; their look is the light (see _light)
        t = rng.normal(0, 0.15, (n, n))
    return t.astype(np.float32)


TEXTURE_AMPLITUDE = {"denim": 0.2, "wool": 0.24, "linen": 0.16, "silk": 0.03, "cotton": 0.05,
                     "polyester": 0.03, "leather": 0.04}


def _light(material: str, c: _Canvas, rng: np.random.Generator) -> np.ndarray | None:
    """How the fabric takes the studio light, in garment coordinates (so it stays in place from
    view to view): a luminance offset in about [-0.5, 0.6], or None for matte fabrics."""
    size = c.size
    yy, xx = _grid(size)
    x0, y0 = c.pt(0.5, 0.5)
    u, v = (xx - x0) / (size * c.scale), (yy - y0) / (size * c.scale)   # garment-centred units
    if c.flip:
        u = -u
    if material == "silk":     # a bright diagonal sheen band across the drape
        d = (u * 0.8 + v * 0.6) - rng.uniform(-0.03, 0.03)
        return 0.55 * np.exp(-(d / 0.07) ** 2) - 0.18 * np.exp(-((d - 0.2) / 0.08) ** 2)
    if material == "polyester":  # a soft, wide sheen
        return 0.16 * np.exp(-((u + 0.05) ** 2 + (v + 0.05) ** 2) / (2 * 0.14 ** 2)) - 0.04
    if material == "leather":  # hard highlights on the upper left, darker towards the edges
        h = sum(0.6 * np.exp(-((u - cx) ** 2 / (2 * 0.035 ** 2) + (v - cy) ** 2 / (2 * 0.1 ** 2)))
                for cx, cy in ((-0.1, -0.08), (0.12, 0.05)))
        edge = np.asarray(c.mask.filter(ImageFilter.BoxBlur(max(1, size // 18))), dtype=np.float32) / 255
        return h - 0.45 * (1 - edge) - 0.05
    if material == "linen":    # natural creases
        lines = Image.new("L", (size, size), 0)
        d = ImageDraw.Draw(lines)
        for _ in range(7):
            cx, cy = rng.uniform(0.25, 0.75, 2)
            a = rng.uniform(-0.6, 0.6) + (np.pi / 2 if rng.random() < 0.5 else 0)
            dx, dy = 0.12 * np.cos(a), 0.12 * np.sin(a)
            d.line(c.pts([(cx - dx, cy - dy), (cx + dx, cy + dy)]), fill=255, width=max(1, size // 90))
        lines = lines.filter(ImageFilter.GaussianBlur(max(0.5, size / 200)))
        return -0.35 * np.asarray(lines, dtype=np.float32) / 255
    return None


def _topstitch(c: _Canvas) -> Image.Image:
    """Denim's gold topstitching: a dashed line just inside every edge of the garment."""
    inset = c.mask.filter(ImageFilter.MinFilter(max(3, 2 * (c.size // 45) + 1)))
    line = inset.filter(ImageFilter.FIND_EDGES).point(_BINARY_LUT)
    if c.size >= 96:
        line = line.filter(ImageFilter.MaxFilter(3))
    yy, xx = _grid(c.size)
    dash = ((((xx + yy) // max(2, c.size // 40)) % 2) == 0).astype(np.uint8) * 255
    return ImageChops.multiply(line, Image.fromarray(dash, "L"))


def _pattern_alpha(p: Product, size: int, rng: np.random.Generator, c: _Canvas) -> tuple[np.ndarray, np.ndarray | None]:
    """Where the pattern colour goes (alpha in [0, 1]) and an optional accent alpha."""
    yy, xx = _grid(size)
    if p.pattern == "striped":
        period = size * rng.uniform(0.07, 0.1)
        axis = yy if rng.random() < 0.8 else xx
        return (((axis + rng.uniform(0, period)) % period) < period * 0.45).astype(np.float32), None
    if p.pattern == "plaid":
        period = size * rng.uniform(0.12, 0.16)
        ph, pv = rng.uniform(0, period, 2)
        h = ((yy + ph) % period) < period * 0.3
        v = ((xx + pv) % period) < period * 0.3
        thin = (((yy + ph + period / 2) % period) < max(1.0, period * 0.06)) | \
               (((xx + pv + period / 2) % period) < max(1.0, period * 0.06))
        return np.clip(0.5 * h + 0.5 * v, 0, 0.9).astype(np.float32), thin.astype(np.float32)
    if p.pattern == "dots":
        period = size * rng.uniform(0.09, 0.12)
        ph = rng.uniform(0, period)
        shift = (np.floor(yy / period) % 2) * period / 2
        dx = (xx + ph + shift) % period - period / 2
        dy = yy % period - period / 2
        return ((dx ** 2 + dy ** 2) < (period * 0.24) ** 2).astype(np.float32), None
    if p.pattern in ("floral", "graphic"):
        petals, accent = Image.new("L", (size, size), 0), Image.new("L", (size, size), 0)
        dp, da = ImageDraw.Draw(petals), ImageDraw.Draw(accent)
        if p.pattern == "floral":
            r, step = size * 0.026, size * 0.17
            offsets = rng.uniform(-0.3, 0.3, (36, 2)) * step
            for n, (fx, fy) in enumerate(offsets):
                fx, fy = fx + (n % 6 + 0.5 * (n // 6 % 2)) * step, fy + (n // 6 + 0.5) * step
                for k in range(5):
                    a = 2 * np.pi * k / 5
                    px, py = fx + 1.6 * r * np.cos(a), fy + 1.6 * r * np.sin(a)
                    dp.ellipse([px - r, py - r, px + r, py + r], fill=255)
                da.ellipse([fx - r * 0.8, fy - r * 0.8, fx + r * 0.8, fy + r * 0.8], fill=255)
        else:
            _draw_motif(dp, da, c, rng, low=p.neckline == "v-neck")
        return np.asarray(petals, dtype=np.float32) / 255, np.asarray(accent, dtype=np.float32) / 255
    return np.zeros((size, size), np.float32), None


def _draw_motif(dp: ImageDraw.ImageDraw, da: ImageDraw.ImageDraw, c: _Canvas, rng: np.random.Generator,
                low: bool) -> None:
    """A big print in the middle of the chest (`low`: below a deep neckline)."""
    cx, cy = CHEST[0], CHEST[1] + (0.08 if low else 0.0)
    r = 0.14
    kind = int(rng.integers(4))
    if kind == 0:  # star
        points = [(cx + (r if k % 2 == 0 else r * 0.45) * np.sin(np.pi * k / 5),
                   cy - (r if k % 2 == 0 else r * 0.45) * np.cos(np.pi * k / 5)) for k in range(10)]
        dp.polygon(c.pts(points), fill=255)
    elif kind == 1:  # bullseye
        dp.ellipse(c.box(cx - r, cy - r, cx + r, cy + r), fill=255)
        da.ellipse(c.box(cx - r * 0.6, cy - r * 0.6, cx + r * 0.6, cy + r * 0.6), fill=255)
        dp.ellipse(c.box(cx - r * 0.3, cy - r * 0.3, cx + r * 0.3, cy + r * 0.3), fill=255)
        da.ellipse(c.box(cx - r * 0.3, cy - r * 0.3, cx + r * 0.3, cy + r * 0.3), fill=0)
    elif kind == 2:  # lightning bolt
        bolt = [(0.02, -1), (-0.5, 0.1), (-0.05, 0.1), (-0.3, 1), (0.5, -0.2), (0.05, -0.2), (0.35, -1)]
        dp.polygon(c.pts([(cx + x * r, cy + y * r) for x, y in bolt]), fill=255)
    else:  # block letters on a bar
        dp.rectangle(c.box(cx - r * 1.1, cy - r * 0.45, cx + r * 1.1, cy + r * 0.45), fill=255)
        for k in range(3):
            x0 = cx - r * 0.9 + k * r * 0.65
            da.rectangle(c.box(x0, cy - r * 0.3, x0 + r * 0.45, cy + r * 0.3), fill=255)


# Lookup tables for Image.point (a Python callable there is evaluated per call).
_BINARY_LUT = [0] + [255] * 255
_SHADOW_LUT = [int(v * SHADOW + 6) for v in range(256)] * 3
_BAND_LUT = [int(v * (1 - BAND_LIGHT) + 255 * BAND_LIGHT) for v in range(256)] * 3
_EDGE_LUT = [int(v * 0.45) for v in range(256)] * 3
GOLD = (212, 150, 52)


def frame(p: Product, size: int, rng: np.random.Generator, flip: bool = False) -> _Canvas:
    """The garment's masks in one view (the first draws of `render_view`'s stream)."""
    c = _Canvas(size, scale=rng.uniform(*SCALE), dx=rng.uniform(-SHIFT_X, SHIFT_X),
                dy=rng.uniform(-SHIFT_Y, SHIFT_Y), flip=flip)
    _draw_garment(c, p)
    return c


def render_view(p: Product, size: int, rng: np.random.Generator, flip: bool = False) -> Image.Image:
    """One photo of a product: the shop's framing, a few pixels of jitter, its background tone."""
    c = frame(p, size, rng, flip)

    # Per-channel 2-D arithmetic and PIL compositing: broadcasting [S, S, 3] float arrays is
    # several times slower on these CPUs.
    alpha, accent = _pattern_alpha(p, size, rng, c)
    oy, ox = rng.integers(0, size, 2)  # where this view crops the weave
    shade = _base_texture(p.material, size)[oy:oy + size, ox:ox + size] * TEXTURE_AMPLITUDE[p.material]
    light = _light(p.material, c, rng)
    shade = 255.0 * (shade if light is None else shade + light)
    base, ink = COLOR_RGB[p.color], COLOR_RGB[p.pattern_color]
    accent_rgb = COLOR_RGB["white" if p.pattern_color == "yellow" else "yellow"] if p.pattern == "floral" else base
    channels = []
    for k in range(3):
        ch = base[k] + alpha * float(ink[k] - base[k])
        if accent is not None:
            ch += accent * (accent_rgb[k] - ch)
        channels.append(ch + shade)
    fabric = Image.fromarray(np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8), "RGB")

    tone = rng.uniform(215, 245) + rng.uniform(-6, 6, 3)  # the studio backdrop, lit from above or below
    ramp = (np.linspace(-0.5, 0.5, size) * rng.uniform(-10, 10))[:, None, None] + tone[None, None, :]
    background = Image.fromarray(np.repeat(np.clip(ramp, 0, 255).astype(np.uint8), size, axis=1), "RGB")
    out = Image.composite(fabric, background, c.mask)
    out = Image.composite(fabric.point(_BAND_LUT), out, ImageChops.multiply(c.band, c.mask))
    out = Image.composite(fabric.point(_SHADOW_LUT), out, ImageChops.multiply(c.inner, c.mask))
    if p.material == "denim":
        out = Image.composite(Image.new("RGB", (size, size), GOLD), out, _topstitch(c))
    edges = c.mask.filter(ImageFilter.FIND_EDGES).point(_BINARY_LUT)
    out = Image.composite(out.point(_EDGE_LUT), out, edges)

    draw = ImageDraw.Draw(out)
    dark = tuple(int(v * 0.45) for v in base)
    bright = tuple(min(255, int(v * 0.6 + 100)) for v in base)
    for kind, pts, width, role in c.lines:
        ink_rgb = dark if role == "dark" else (236, 234, 228)
        if kind == "line":
            draw.line(pts, fill=ink_rgb, width=width)
        elif kind == "polygon":
            draw.polygon(pts, outline=ink_rgb, width=width)
        else:
            draw.ellipse(pts, fill=bright, outline=dark, width=width)
    return out


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
