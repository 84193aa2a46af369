"""Linear layers through oneDNN on the CPU, with gradients.

On this project's AMD CPUs `F.linear` (MKL's sgemm) reaches about 105 GFLOP/s on one thread
for the heads' shapes ([64-512, 512] x [512, 512]) and oneDNN's `_linear_pointwise` about
240, for the forward product and for both backward ones (benchmarks/bench_train.py prints
the ratio). The backbone's forward uses it without autograd (`backbone.OneDnnResidualAttentionBlock`);
`linear` below adds the backward, so the trainable heads use it while training as well.

Where it cannot apply (not a CPU, not float32, autocast on, no oneDNN in this torch) `linear`
is `F.linear`. The results agree with `F.linear` to float32 rounding, not bit for bit.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_ENABLED = True  # switched off by `eager_linear()` (benchmarks compare both in one run)


@functools.cache  # asked on every linear call of a training step; the answer is fixed per process
def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  post_op: str = "none", algorithm: str = "") -> torch.Tensor:
    """`F.linear(x, weight, bias)` (then `post_op`) by oneDNN, without autograd, on the plain weight
    (reordered per call: packing every weight once measured no faster and doubles the memory)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], algorithm)


class _OneDnnLinear(torch.autograd.Function):
    """y = x W^T + b with every product (y, dL/dx = g W, dL/dW = g^T x) by oneDNN; x is 2-D."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_linear(grad, weight.t().contiguous(), None)
        if ctx.needs_input_grad[1]:
            grad_weight = onednn_linear(grad.t().contiguous(), x.t().contiguous(), None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


def applies(x: torch.Tensor, layer: nn.Linear) -> bool:
    return (_ENABLED and x.device.type == "cpu" and x.dtype == torch.float32 and layer.weight.dtype == torch.float32
            and not torch.is_autocast_cpu_enabled() and available())


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """`layer(x)`, through oneDNN where it applies (gradients included), else `F.linear`."""
    if not applies(x, layer):
        return F.linear(x, layer.weight, layer.bias)
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    return _OneDnnLinear.apply(flat, layer.weight, layer.bias).reshape(*x.shape[:-1], layer.out_features)


def run_layers(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """`layers(x)` with each nn.Linear through `linear`."""
    for layer in layers:
        x = linear(x, layer) if type(layer) is nn.Linear else layer(x)
    return x


@contextlib.contextmanager
def eager_linear() -> Iterator[None]:
    """`linear` is plain `F.linear` inside this block (for comparisons in one run)."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, False
    try:
        yield
    finally:
        _ENABLED = previous
