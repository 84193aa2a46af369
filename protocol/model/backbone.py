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

Forward runtime (`create_backbone(..., forward=)`, recorded in `Backbone.runtime`, never in
the fingerprint: it changes how the same numbers are computed, not which). On a CPU the
transformer blocks spend ~90% of the forward in their four linear layers, and PyTorch runs
fp32 GEMMs with MKL, which on AMD CPUs takes its AVX2 path: 212-237 GFLOP/s for a 2048^3
`torch.mm` on 2 Zen 5 cores, where oneDNN (bundled with PyTorch, AVX-512 on any vendor)
reaches 480-540 on the same shapes. `FORWARD_ONEDNN` runs those linear layers through
oneDNN (`torch.ops.mkldnn._linear_pointwise`, with GELU fused into the first MLP GEMM) and
attention through `F.scaled_dot_product_attention`. ViT-B-32, batch 32, 2 cores: images
21.7 -> 47.5 /s, texts 108 -> 220 /s (bench_features.py, both in one run: 1.96-2.22x),
L2-normalised features within 3e-7 of eager. Measured and not kept (no gain, or slower):
channels-last conv stem (+0-7%, the stem is 3% of the forward), torch.compile (25.7 s to
compile, then 21.6/s vs 24.3/s eager), inductor
freezing (23.8 vs 21.6/s, noise), TorchScript trace+freeze (19.5 vs 21.2/s), prepacked
oneDNN weights (images +-0, texts +7%, for a second copy of every weight). Torch's default
thread count already is the number of cores this process may use (`os.sched_getaffinity`).

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, text_global_pool
from PIL import Image

from protocol.io import atomic_path
from protocol.model import onednn
from protocol.model.onednn import onednn_linear
from protocol.provenance import FingerprintMismatchError, check_fingerprint  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

OPEN_CLIP_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "open_clip"
open_clip.add_model_config(OPEN_CLIP_CONFIG_DIR)

NO_WEIGHTS = "none"
WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")

FORWARD_EAGER = "eager"  # open_clip's modules as they are (PyTorch's MKL GEMMs, the MHA fast path)
FORWARD_ONEDNN = "onednn"  # the blocks' linear layers through oneDNN: CPU, fp32, no autograd
FORWARD_AUTO = "auto"  # onednn where it applies (see onednn_unavailable), else eager
FORWARDS = (FORWARD_AUTO, FORWARD_EAGER, FORWARD_ONEDNN)


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
    # How the forward is computed, e.g. {"forward": "onednn", "torch": "2.14.1"}: provenance beside
    # `source`, not part of the fingerprint (the same weights give the same features within 1e-5).
    runtime: dict = field(default_factory=dict)

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


class OneDnnResidualAttentionBlock(ResidualAttentionBlock):
    """open_clip's ResidualAttentionBlock with its linear layers run by oneDNN (module docstring).

    `use_forward` swaps the class of existing blocks: the parameters, module tree and state
    dict stay exactly open_clip's. The math is the block's own (pre-norm attention with an additive
    float mask, then the MLP); anything this path does not cover (gradients, autocast, another
    device or dtype, cross-attention inputs) runs open_clip's forward unchanged.
    """

    def forward(self, q_x, k_x=None, v_x=None, attn_mask=None):
        if (k_x is not None or v_x is not None or torch.is_grad_enabled() or q_x.device.type != "cpu"
                or q_x.dtype != torch.float32 or q_x.dim() != 3 or torch.is_autocast_enabled("cpu")):
            return super().forward(q_x, k_x, v_x, attn_mask)
        n, length, width = q_x.shape
        heads = self.attn.num_heads
        qkv = onednn_linear(self.ln_1(q_x), self.attn.in_proj_weight, self.attn.in_proj_bias)
        q, k, v = qkv.view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q_x.dtype)  # as open_clip's block does: added to the scores
            if attn_mask.dim() == 3:  # nn.MultiheadAttention's (n * heads, L, S) layout
                attn_mask = attn_mask.view(n, heads, length, -1)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2)
        x = q_x + self.ls_1(onednn_linear(attended.reshape(n, length, width), self.attn.out_proj.weight,
                                           self.attn.out_proj.bias))
        hidden, fc, act = self.ln_2(x), self.mlp.c_fc, self.mlp.gelu
        if type(act) is torch.nn.GELU:  # fused into the GEMM's epilogue: one pass less over the widest tensor
            hidden = onednn_linear(hidden, fc.weight, fc.bias, "gelu", act.approximate)
        else:
            hidden = act(onednn_linear(hidden, fc.weight, fc.bias))
        return x + self.ls_2(onednn_linear(hidden, self.mlp.c_proj.weight, self.mlp.c_proj.bias))


def _onednn_block(block: torch.nn.Module) -> bool:
    """Whether OneDnnResidualAttentionBlock computes exactly what this block does."""
    attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
    return (type(block) in (ResidualAttentionBlock, OneDnnResidualAttentionBlock)
            and not hasattr(block, "ln_1_kv")
            and isinstance(attn, torch.nn.MultiheadAttention) and attn.batch_first and attn._qkv_same_embed_dim
            and attn.bias_k is None and not attn.add_zero_attn
            and all(isinstance(getattr(mlp, name, None), torch.nn.Linear) for name in ("c_fc", "c_proj"))
            and hasattr(mlp, "gelu")
            and all(p.dtype == torch.float32 for p in block.parameters()))


def onednn_unavailable(model: torch.nn.Module, device: torch.device) -> str | None:
    """Why FORWARD_ONEDNN cannot run `model` on `device`, or None when it can."""
    if device.type != "cpu":
        return f"device {device} is not a CPU"
    if not onednn.available():
        return f"this torch {torch.__version__} has no oneDNN linear kernel"
    if not any(_onednn_block(m) for m in model.modules()):
        return "the model has no open_clip ResidualAttentionBlock in fp32 with fused q/k/v"
    return None


def use_forward(model: torch.nn.Module, device: torch.device, forward: str = FORWARD_AUTO) -> dict:
    """Set how `model`'s transformer blocks compute (FORWARDS) and return the runtime record.

    Only the blocks' class changes (OneDnnResidualAttentionBlock <-> ResidualAttentionBlock), so
    the call can be undone and the state dict, hence the fingerprint, never changes."""
    if forward not in FORWARDS:
        raise ValueError(f"unknown forward {forward!r}: use one of {FORWARDS}")
    why_not = onednn_unavailable(model, device)
    if forward == FORWARD_ONEDNN and why_not:
        raise ValueError(f"forward={FORWARD_ONEDNN!r} cannot run here: {why_not}. Pass forward="
                         f"{FORWARD_EAGER!r} or {FORWARD_AUTO!r} (which falls back to eager).")
    resolved = FORWARD_EAGER if forward == FORWARD_EAGER or why_not else FORWARD_ONEDNN
    for module in model.modules():
        if _onednn_block(module):
            module.__class__ = OneDnnResidualAttentionBlock if resolved == FORWARD_ONEDNN else ResidualAttentionBlock
    if forward == FORWARD_AUTO and why_not:
        log.info("forward %s (%s is off: %s)", resolved, FORWARD_ONEDNN, why_not)
    return {"forward": resolved, "torch": torch.__version__}


def _concat(chunks: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros((0, dim), dtype=np.float32)


def create_backbone(spec: BackboneSpec, device: str | None = None, forward: str = FORWARD_AUTO) -> Backbone:
    """Build the frozen backbone described by `spec` (the one factory; see module docstring).
    `forward` (FORWARDS) says how its forward is computed; it is recorded in `Backbone.runtime`."""
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
    runtime = use_forward(model, torch_device, forward)
    log.info(
        "backbone %s (%s) built in %.1fs, fingerprint %s, forward %s",
        spec.model, source, time.perf_counter() - started, fingerprint[:16], runtime["forward"],
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
        runtime=runtime,
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
