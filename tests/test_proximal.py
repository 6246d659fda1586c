"""FedProx's proximal term on a quadratic, where the answer is known in closed form."""

from __future__ import annotations

import torch
from torch import nn

from ppa.training.proximal import ProximalTerm


def test_proximal_gradient_and_fixed_point_on_a_quadratic():
    # Local objective 0.5 |w - t|^2 drifts w to the site optimum t; with the proximal term
    # the minimiser is (t + mu w0) / (1 + mu).
    w0 = torch.tensor([1.0, -2.0, 0.5])
    target = torch.tensor([3.0, 0.0, -1.5])
    mu = 0.5
    layer = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w0.view(1, 3))
    term = ProximalTerm.attach(layer, mu)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    # One step by hand: gradient at w0 has no proximal part yet.
    loss = 0.5 * ((layer.weight.view(3) - target) ** 2).sum()
    opt.zero_grad()
    loss.backward()
    assert torch.allclose(layer.weight.grad.view(3), w0 - target)
    opt.step()
    w1 = layer.weight.detach().view(3).clone()
    loss = 0.5 * ((layer.weight.view(3) - target) ** 2).sum()
    opt.zero_grad()
    loss.backward()
    assert torch.allclose(layer.weight.grad.view(3), (w1 - target) + mu * (w1 - w0))
    for _ in range(300):
        opt.zero_grad()
        (0.5 * ((layer.weight.view(3) - target) ** 2).sum()).backward()
        opt.step()
    expected = (target + mu * w0) / (1 + mu)
    assert torch.allclose(layer.weight.detach().view(3), expected, atol=1e-5)
    assert abs(term.value() - 0.5 * mu * float(((expected - w0) ** 2).sum())) < 1e-5
    term.remove()
    opt.zero_grad()
    (0.5 * ((layer.weight.view(3) - target) ** 2).sum()).backward()
    assert torch.allclose(layer.weight.grad.view(3), layer.weight.detach().view(3) - target)
