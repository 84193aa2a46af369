"""What the model eats: dataset rows -> decoded, preprocessed pixels or token ids.

Both extraction engines use these pieces: the local engine runs `InputPlan.collate` in
DataLoader workers and `InputPlan.features` in the main process, a Ray actor runs both.

Images take one of two routes:
- the CPU route decodes with PIL and applies the backbone's own open_clip transform, in
  the workers (the reference: it is how open_clip preprocesses);
- the device route (CUDA only) keeps JPEG bytes encoded until the main process decodes a
  whole batch on the GPU (`torchvision.io.decode_jpeg(device=...)`), and does resize,
  centre crop and normalisation there too, with the same torchvision modules the open_clip
  transform is made of, applied to uint8 tensors. Other formats are decoded with PIL in the
  workers and only resized on the device. On a GPU, PIL decoding and bicubic resizing in
  the workers, not the model, bound extraction (3.7 ms per item measured on an H100).
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import datasets
import numpy as np
import torch
import torchvision.transforms as T
from open_clip.transform import MaybeConvertMode
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from protocol.model.backbone import Backbone

log = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"


class RowReader(torch.utils.data.Dataset):
    """Reads one batch of rows with one Arrow query (`__getitems__`), images undecoded."""

    def __init__(self, dataset: datasets.Dataset, column: str):
        rows = dataset.select_columns(["item_id", column])
        if column == "image":
            rows = rows.cast_column("image", datasets.Image(decode=False))  # decode in the workers
        self.rows = rows
        self.column = column

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, row: int) -> dict:
        return self.__getitems__([row])

    def __getitems__(self, rows: list[int]) -> dict:
        batch = self.rows[rows]
        return {"rows": list(rows), "item_ids": batch["item_id"], "values": batch[self.column]}


@dataclass(frozen=True)
class InputPlan:
    """How one kind of input reaches the model: `collate` (picklable; DataLoader workers or a
    Ray actor) turns a RowReader batch into (rows, inputs); `features` (beside the model)
    turns inputs into [n, D] L2-normalised features on the backbone's device."""

    collate: Callable[[dict], tuple[list[int], Any]]
    features: Callable[[Any], torch.Tensor]


def input_plan(kind: str, backbone: Backbone) -> InputPlan:
    if kind == "text":
        return InputPlan(TokenBatch(backbone.tokenizer), backbone.token_features)
    if backbone.device.type == "cuda":
        plan = device_image_plan(backbone)
        if plan is not None:
            return plan
        log.warning("the preprocessing of %s has steps the device route does not know: decoding and "
                    "preprocessing images with PIL in the workers", backbone.spec.model)
    return InputPlan(PixelBatch(backbone.preprocess), backbone.pixel_features)


def device_image_plan(backbone: Backbone) -> InputPlan | None:
    """The device route for images on `backbone.device`; None when the transform has steps it
    cannot replay on tensors. Used on CUDA; it runs on any device (the tests use the CPU)."""
    preprocess = TensorPreprocess.of(backbone.preprocess)
    if preprocess is None:
        return None
    return InputPlan(EncodedImageBatch(backbone.preprocess), DeviceImageFeatures(backbone, preprocess))


# --- texts ----------------------------------------------------------------------------


class TokenBatch:
    """collate_fn: texts -> token ids [n, context_length]."""

    def __init__(self, tokenizer: Callable):
        self.tokenizer = tokenizer

    def __call__(self, batch: dict) -> tuple[list[int], torch.Tensor]:
        for row, item_id, text in zip(batch["rows"], batch["item_ids"], batch["values"]):
            if not isinstance(text, str):
                raise ValueError(
                    f"dataset row {row} (item_id {item_id!r}): column 'text' is {text!r}, not a string; "
                    "fill it (empty string allowed) in prepare"
                )
        return batch["rows"], self.tokenizer(batch["values"])


# --- images, CPU route ----------------------------------------------------------------


class PixelBatch:
    """collate_fn: encoded image bytes -> preprocessed pixel tensor [n, 3, H, W]."""

    def __init__(self, preprocess: Callable):
        self.preprocess = preprocess

    def __call__(self, batch: dict) -> tuple[list[int], torch.Tensor]:
        pixels = [
            self.preprocess(open_image(value, row, item_id))
            for row, item_id, value in zip(batch["rows"], batch["item_ids"], batch["values"])
        ]
        return batch["rows"], torch.stack(pixels)


def image_bytes(value: dict | None, row: int, item_id: str) -> bytes:
    """The encoded bytes of one image cell (inline bytes, else the file it names)."""
    try:
        if value and value.get("bytes"):
            return value["bytes"]
        if value and value.get("path"):
            with open(value["path"], "rb") as f:
                return f.read()
        raise ValueError("the image cell is empty")
    except (OSError, ValueError) as e:
        raise ValueError(
            f"dataset row {row} (item_id {item_id!r}): image cannot be read ({e}); fix or drop this row in prepare"
        ) from e


def open_image(value: dict | None, row: int, item_id: str) -> Image.Image:
    data = image_bytes(value, row, item_id)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError) as e:
        raise ValueError(
            f"dataset row {row} (item_id {item_id!r}): image cannot be decoded ({e}); fix or drop this row in prepare"
        ) from e
    return image


def rgb_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 [3, H, W], with the RGB conversion open_clip's transform makes."""
    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


# --- images, device route -------------------------------------------------------------


JPEG, DECODED, PREPROCESSED = "jpeg", "decoded", "preprocessed"  # forms of an image on its way to the device
RESIZE_AS_RGB = ("RGB", "L")  # modes for which open_clip's resize-then-convert equals convert-then-resize


@dataclass
class EncodedImages:
    """A batch on its way to the device, each image in one of three forms: JPEG bytes (1-D
    uint8, decoded on the device), decoded uint8 [3, H, W], or already preprocessed."""

    rows: list[int]
    item_ids: list[str]
    data: list[torch.Tensor]
    forms: list[str]

    def pin_memory(self) -> "EncodedImages":  # DataLoader(pin_memory=True) calls this
        return EncodedImages(self.rows, self.item_ids, [t.pin_memory() for t in self.data], self.forms)


class EncodedImageBatch:
    """collate_fn of the device route: read bytes; decode only what the device cannot (non-JPEG).

    open_clip's transform resizes before it converts to RGB, so a palette, RGBA or 16-bit
    image is resized in its own mode (a palette image with nearest neighbour): such images
    get the whole PIL transform here, so that they come out exactly as on the CPU route.
    """

    def __init__(self, preprocess: Callable):
        self.preprocess = preprocess

    def __call__(self, batch: dict) -> tuple[list[int], EncodedImages]:
        data, forms = [], []
        for row, item_id, value in zip(batch["rows"], batch["item_ids"], batch["values"]):
            raw = image_bytes(value, row, item_id)
            if raw[:3] == JPEG_MAGIC:
                data.append(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
                forms.append(JPEG)
                continue
            image = open_image({"bytes": raw}, row, item_id)
            if image.mode in RESIZE_AS_RGB:
                data.append(rgb_tensor(image))
                forms.append(DECODED)
            else:
                data.append(self.preprocess(image))
                forms.append(PREPROCESSED)
        return batch["rows"], EncodedImages(list(batch["rows"]), list(batch["item_ids"]), data, forms)


def decode_on(device: torch.device, images: EncodedImages) -> list[torch.Tensor]:
    """Each image on `device`, JPEGs decoded there in one batched call (uint8 [3, H, W]);
    preprocessed ones as they are (float)."""
    out: list[torch.Tensor | None] = [None] * len(images.data)
    jpegs = [i for i, form in enumerate(images.forms) if form == JPEG]
    if jpegs:
        try:
            decoded = decode_jpeg([images.data[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad or unusual (CMYK, lossless) JPEG fails the batch: find it per image
            decoded = [_decode_one(images, i, device) for i in jpegs]
        for i, tensor in zip(jpegs, decoded):
            out[i] = tensor
    for i, form in enumerate(images.forms):
        if form != JPEG:
            out[i] = images.data[i].to(device, non_blocking=True)
    return out


def _decode_one(images: EncodedImages, i: int, device: torch.device) -> torch.Tensor:
    try:
        return decode_jpeg(images.data[i], mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # PIL knows more JPEG flavours; it also names a truly broken file
        pil = open_image({"bytes": images.data[i].numpy().tobytes()}, images.rows[i], images.item_ids[i])
        return rgb_tensor(pil).to(device)


class TensorPreprocess:
    """open_clip's (PIL) val transform replayed on uint8 [3, H, W] tensors on any device.

    The transform's own Resize and CenterCrop modules run on the uint8 tensor (torchvision's
    antialiased bicubic, rounded back to uint8 as PIL does), the PIL-to-tensor step becomes
    `/ 255`, and its Normalize runs as is. Images of one size are processed as one batch.
    """

    def __init__(self, before: list[Callable], after: list[Callable]):
        self.before = before  # on uint8, before the float conversion
        self.after = after  # on float in [0, 1]

    @classmethod
    def of(cls, preprocess: Callable) -> "TensorPreprocess | None":
        steps = getattr(preprocess, "transforms", None)
        if steps is None:
            return None
        before, after, converted = [], [], False
        for step in steps:
            if isinstance(step, (T.Resize, T.CenterCrop)) and not converted:
                before.append(step)
            elif isinstance(step, MaybeConvertMode) or getattr(step, "__name__", "") == "_convert_to_rgb":
                continue  # images are decoded as RGB
            elif isinstance(step, T.ToTensor) and not converted:
                converted = True
            elif isinstance(step, T.Normalize) and converted:
                after.append(step)
            else:
                return None
        return cls(before, after) if converted else None

    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor:
        """uint8 [3, H, W] images (float ones count as preprocessed already) -> [n, 3, h, w]."""
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        out: list[torch.Tensor | None] = [None] * len(images)
        for i, image in enumerate(images):
            if image.dtype == torch.uint8:
                by_size[tuple(image.shape[-2:])].append(i)
            else:
                out[i] = image
        for indices in by_size.values():
            x = torch.stack([images[i] for i in indices])
            for step in self.before:
                x = step(x)
            x = x.float().div_(255)
            for step in self.after:
                x = step(x)
            for i, pixels in zip(indices, x):
                out[i] = pixels
        return torch.stack(out)


class DeviceImageFeatures:
    """`InputPlan.features` of the device route: decode, preprocess and embed on the device."""

    def __init__(self, backbone: Backbone, preprocess: TensorPreprocess):
        self.backbone, self.preprocess = backbone, preprocess

    def __call__(self, images: EncodedImages) -> torch.Tensor:
        with torch.inference_mode():
            pixels = self.preprocess(decode_on(self.backbone.device, images))
        return self.backbone.pixel_features(pixels)
