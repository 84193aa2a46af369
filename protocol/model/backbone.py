"""The frozen OpenCLIP backbone: one factory, a fingerprint, and batched encoders.

`create_backbone(spec)` is the only place a backbone is built. It goes through
`open_clip.create_model_and_transforms` for every kind of weights:

- `pretrained="none"`: seeded random init (`torch.manual_seed(seed)` inside a forked
  RNG, so the caller's global RNG is untouched); the same seed gives the same weights;
- an existing local file: open_clip's own `pretrained=<path>` loading (the route a
  hub tag takes after download; `torch.load(weights_only=True)` or safetensors);
- anything else: an open_clip pretrained tag (hub download or local cache). Without a
  network that fails, and the error says to pass a local weights file or `none`.

Fingerprint: sha256 over the architecture (model name and its open_clip config), the
image preprocessing config and every state-dict tensor (name, dtype, shape, bytes) in
state-dict order. It does NOT hash where the weights came from: identical weights give
identical fingerprints whether they were seeded, read from a file or downloaded, so a
feature cache made from a seeded model is reused when the same weights are loaded from
a file. The weights source is recorded beside it (`BackboneSpec`, `Backbone.source`)
in every manifest. Preprocessing is part of the fingerprint because it changes the
features as much as the weights do (a tag can bring its own mean/std, which a plain
weights file does not carry: such a file then fingerprints differently, and rightly so).
Hashing ViT-B-32 (151M fp32 parameters) takes about 0.4 s on one CPU core.

`protocol/configs/open_clip/` (the tiny test model `protocol-tiny`) is registered
with open_clip when this module is imported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from PIL import Image

from protocol.io import atomic_path
from protocol.provenance import FingerprintMismatchError, check_fingerprint  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

OPEN_CLIP_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "open_clip"
open_clip.add_model_config(OPEN_CLIP_CONFIG_DIR)

NO_WEIGHTS = "none"
WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass(frozen=True)
class BackboneSpec:
    model: str = "ViT-B-32"  # open_clip model name; "protocol-tiny" is the tiny test config
    pretrained: str = NO_WEIGHTS  # open_clip tag | path to a local weights file | "none"
    seed: int = 0  # used when pretrained == "none"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Backbone:
    spec: BackboneSpec
    model: torch.nn.Module  # open_clip CLIP, eval(), requires_grad False
    preprocess: Callable  # PIL.Image -> tensor (the open_clip val transform)
    tokenizer: Callable  # list[str] -> LongTensor
    fingerprint: str  # sha256 hex over architecture + preprocessing + state dict
    embed_dim: int
    device: torch.device
    source: str = ""  # where the weights came from: "seed:0", "file:/abs/path", "tag:openai"

    def embed_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Preprocessed images [n, 3, H, W] -> [n, D] float32, L2-normalised."""
        return self.pixel_features(pixels).cpu().numpy()

    def embed_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """Token ids [n, context_length] -> [n, D] float32, L2-normalised."""
        return self.token_features(tokens).cpu().numpy()

    def pixel_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """`embed_pixels`, left on the backbone's device: a caller that gathers many batches
        copies them back once, so a GPU never waits for a per-batch copy to the host."""
        with torch.inference_mode(), self._autocast():
            features = self.model.encode_image(pixels.to(self.device, non_blocking=True))
        return F.normalize(features.float(), dim=-1)

    def token_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """`embed_tokens`, left on the backbone's device (see `pixel_features`)."""
        with torch.inference_mode(), self._autocast():
            features = encode_text_trimmed(self.model, tokens.to(self.device, non_blocking=True))
        return F.normalize(features.float(), dim=-1)

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """PIL images -> [n, D] float32, L2-normalised (preprocessed in this process)."""
        chunks = [
            self.embed_pixels(torch.stack([self.preprocess(im) for im in images[i : i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
        return _concat(chunks, self.embed_dim)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Strings -> [n, D] float32, L2-normalised."""
        chunks = [
            self.embed_tokens(self.tokenizer(list(texts[i : i + batch_size])))
            for i in range(0, len(texts), batch_size)
        ]
        return _concat(chunks, self.embed_dim)

    def _autocast(self):
        # Mixed precision only pays on GPU; on these CPUs bf16 autocast is slower than fp32.
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return nullcontext()


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)`, run only over the columns up to the batch's last end token.

    Shop titles are ~30 tokens of CLIP's 77-token context. The text tower is causal and
    pools at the end token (argmax pooling), so no position after a sequence's end token
    can change its embedding: those padding columns are dead compute, and cutting them
    gives the same numbers about twice as fast. Towers of another shape use encode_text.
    """
    trimmable = (isinstance(model, open_clip.CLIP) and getattr(model, "text_pool_type", None) == "argmax"
                 and getattr(model, "attn_mask", None) is not None and model.transformer.batch_first)
    if not trimmable:
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = text_global_pool(x, tokens, model.text_pool_type)
    if model.text_projection is None:
        return x
    return model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection


def _concat(chunks: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros((0, dim), dtype=np.float32)


def create_backbone(spec: BackboneSpec, device: str | None = None) -> Backbone:
    """Build the frozen backbone described by `spec` (the one factory; see module docstring)."""
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pretrained, source = _resolve_pretrained(spec)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.model, pretrained=pretrained, weights_only=True
            )
        except Exception as e:  # open_clip raises RuntimeError, AssertionError, UnpicklingError...
            raise RuntimeError(_load_failure_message(spec, e)) from e
    model.eval().requires_grad_(False)
    fingerprint = backbone_fingerprint(spec.model, model)
    log.info(
        "backbone %s (%s) built in %.1fs, fingerprint %s",
        spec.model, source, time.perf_counter() - started, fingerprint[:16],
    )
    return Backbone(
        spec=spec,
        model=model.to(torch_device),
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(spec.model),
        fingerprint=fingerprint,
        embed_dim=int(open_clip.get_model_config(spec.model)["embed_dim"]),
        device=torch_device,
        source=source,
    )


def _resolve_pretrained(spec: BackboneSpec) -> tuple[str | None, str]:
    """`spec.pretrained` -> (value for open_clip's `pretrained=`, source descriptor)."""
    if open_clip.get_model_config(spec.model) is None:
        raise ValueError(
            f"unknown open_clip model {spec.model!r} (BackboneSpec.model): use one of "
            f"open_clip.list_models(), e.g. 'ViT-B-32', or 'protocol-tiny' for tests."
        )
    value = spec.pretrained.strip()
    if value.lower() == NO_WEIGHTS:
        return None, f"seed:{spec.seed}"
    if os.path.isfile(value):
        return value, f"file:{Path(value).resolve()}"
    if os.sep in value or value.endswith(WEIGHTS_SUFFIXES):
        raise FileNotFoundError(
            f"weights file {value!r} (BackboneSpec.pretrained) does not exist: pass an existing "
            f"local weights file, an open_clip tag of {spec.model!r}, or {NO_WEIGHTS!r}."
        )
    known = open_clip.list_pretrained_tags_by_model(spec.model)
    if value not in known:
        raise ValueError(
            f"{value!r} is neither a local weights file nor an open_clip pretrained tag of "
            f"{spec.model!r} (known tags: {known or 'none'}): pass a local weights file, "
            f"one of those tags, or {NO_WEIGHTS!r} for a seeded random init."
        )
    return value, f"tag:{value}"


def _load_failure_message(spec: BackboneSpec, error: Exception) -> str:
    return (
        f"could not build open_clip model {spec.model!r} with pretrained={spec.pretrained!r}: "
        f"{' '.join(str(error).split()).rstrip('.')}. A weights file must hold a state dict of this very model; an "
        "open_clip tag needs a network or the local hub cache. Without them, pass a local weights "
        f"file (BackboneSpec.pretrained=/path/to/weights.pt) or {NO_WEIGHTS!r} for a seeded random init."
    )


def backbone_fingerprint(model_name: str, model: torch.nn.Module) -> str:
    """sha256 over architecture name + config, preprocessing config and the state dict."""
    started = time.perf_counter()
    digest = hashlib.sha256()
    header = {
        "model": model_name,
        "config": open_clip.get_model_config(model_name),
        "preprocess": open_clip.get_model_preprocess_cfg(model),
    }
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        # A byte view of the tensor's own memory: no copy for contiguous CPU tensors.
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    log.debug("fingerprinted %s in %.2fs", model_name, time.perf_counter() - started)
    return digest.hexdigest()


def save_weights(backbone: Backbone, path: str | os.PathLike) -> Path:
    """Write the backbone's state dict (plain CPU tensors) atomically; loadable by
    `BackboneSpec(model, pretrained=str(path))` through open_clip's file loading."""
    state = {k: v.detach().cpu() for k, v in backbone.model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)
