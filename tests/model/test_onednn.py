"""The heads' linear layers through oneDNN: the same values and gradients as F.linear, and F.linear where
oneDNN does not apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from protocol.model import onednn

pytestmark = pytest.mark.skipif(not onednn.available(), reason="this torch has no oneDNN linear kernel")


def grads(fn, x: torch.Tensor, layer: nn.Linear, upstream: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    out = fn(x)
    (out * upstream).sum().backward()
    return out.detach(), x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()


def test_linear_gives_f_linears_values_and_gradients_to_float32_rounding():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    x, upstream = torch.randn(3, 37, 16), torch.randn(3, 37, 8)  # leading dims are flattened and restored
    fast = grads(lambda v: onednn.linear(v, layer), x, layer, upstream)
    eager = grads(lambda v: F.linear(v, layer.weight, layer.bias), x, layer, upstream)
    assert fast[0].shape == (3, 37, 8)
    for got, want in zip(fast, eager):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_frozen_input_and_a_frozen_weight_get_no_gradient_and_no_error():
    layer = nn.Linear(4, 2)
    layer.weight.requires_grad_(False)
    x = torch.randn(5, 4, requires_grad=True)
    onednn.linear(x, layer).sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is not None and x.grad.shape == (5, 4)


def test_where_onednn_does_not_apply_linear_is_f_linear_exactly():
    layer = nn.Linear(6, 3).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    assert not onednn.applies(x, layer)
    assert torch.equal(onednn.linear(x, layer), F.linear(x, layer.weight, layer.bias))
    layer32, x32 = nn.Linear(6, 3), torch.randn(4, 6)
    assert onednn.applies(x32, layer32)
    with onednn.eager_linear():
        assert not onednn.applies(x32, layer32)
        assert torch.equal(onednn.linear(x32, layer32), F.linear(x32, layer32.weight, layer32.bias))
    assert onednn.applies(x32, layer32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn.applies(x32, layer32)


def test_a_trained_projection_head_steps_alike_either_way():
    from protocol.model.protocol_model import ProjectionHead

    def one_step(eager: bool) -> torch.Tensor:
        torch.manual_seed(0)
        head = ProjectionHead("mlp", 16, 16, 32, 0.0)
        nn.init.normal_(head.residual[-1].weight)  # not the zero init, so every layer gets a gradient
        optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
        x = torch.randn(20, 16)
        with onednn.eager_linear() if eager else torch.enable_grad():
            head(x).pow(3).sum().backward()
        optimizer.step()
        return torch.cat([p.detach().flatten() for p in head.parameters()])

    torch.testing.assert_close(one_step(eager=False), one_step(eager=True), rtol=1e-5, atol=1e-5)
