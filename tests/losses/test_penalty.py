"""R1 / R2 gradient penalties, exact and finite-difference (docs/method.md §4.3)."""

import torch
from torch import nn

from gatgan.losses.penalty import exact_gradient_penalty, finite_difference_penalty


def small_mlp(dim: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, 1), nn.Flatten(0)).double()


def input_gradient(f: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x).sum(), x)
    return grad


def test_finite_difference_approaches_squared_directional_derivative_as_sigma_shrinks():
    f = small_mlp()
    x = torch.randn(5, 6, dtype=torch.float64)
    eps = torch.randn(5, 6, dtype=torch.float64)
    directional = (input_gradient(f, x) * eps).sum(-1)
    errors = []
    for sigma in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6):
        with torch.no_grad():
            penalty = finite_difference_penalty(f(x), f(x + sigma * eps), sigma)
        assert penalty.shape == (5,)
        errors.append((penalty.sqrt() - directional.abs()).abs().max().item())  # O(sigma)
    assert errors[-1] < 1e-6
    assert all(a > b for a, b in zip(errors, errors[1:]))  # converges as sigma -> 0
    with torch.no_grad():
        torch.testing.assert_close(finite_difference_penalty(f(x), f(x + 1e-6 * eps), 1e-6),
                                   directional.square(), rtol=1e-4, atol=1e-8)


def test_finite_difference_averaged_over_directions_is_the_exact_r1():
    f = small_mlp()
    x = torch.randn(3, 6, dtype=torch.float64)
    directions = 20_000
    eps = torch.randn(directions, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sigma = 1e-4
    with torch.no_grad():
        logits = f(x)
        perturbed = f((x + sigma * eps).view(-1, 6)).view(directions, 3)
        approx = finite_difference_penalty(logits, perturbed, sigma).mean(0)
    exact = input_gradient(f, x).square().sum(-1)
    torch.testing.assert_close(approx, exact, rtol=0.05, atol=0)  # sampling error ~ sqrt(2/N) = 1%


def test_finite_difference_gradients_flow_through_both_terms():
    logits = torch.tensor([1.0, -2.0], requires_grad=True)
    perturbed = torch.tensor([1.5, -2.5], requires_grad=True)
    sigma = 0.1
    finite_difference_penalty(logits, perturbed, sigma).sum().backward()
    diff = torch.tensor([-0.5, 0.5])
    torch.testing.assert_close(logits.grad, 2 * diff / sigma**2)
    torch.testing.assert_close(perturbed.grad, -2 * diff / sigma**2)


def test_exact_penalty_matches_hand_gradient_of_a_quadratic():
    torch.manual_seed(0)
    a = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    logits = (a * x.square()).sum(-1) + x @ b  # grad_x = 2 a x + b
    penalty = exact_gradient_penalty(logits, x)
    grad = 2 * a.detach() * x.detach() + b
    torch.testing.assert_close(penalty, grad.square().sum(-1))
    # differentiable (create_graph): d/da sum_samples ||2 a x + b||^2 = sum 2 (2 a x + b) * 2 x
    penalty.sum().backward()
    torch.testing.assert_close(a.grad, (4 * grad * x.detach()).sum(0))


def test_exact_penalty_batch_dim_one_sums_over_levels_per_sample():
    torch.manual_seed(0)
    K, B, D = 4, 3, 5
    weights = torch.randn(K, 1, D, dtype=torch.float64)
    x = torch.randn(K, B, D, dtype=torch.float64, requires_grad=True)
    logits = (weights * x.square()).sum(dim=(0, 2))  # one logit per sample, from all levels
    penalty = exact_gradient_penalty(logits, x, batch_dim=1)
    assert penalty.shape == (B,)
    expected = (2 * weights * x.detach()).square().sum(dim=(0, 2))
    torch.testing.assert_close(penalty, expected)


def test_exact_penalty_agrees_with_finite_difference_on_a_network():
    f = small_mlp()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    exact = exact_gradient_penalty(f(x), x)
    torch.testing.assert_close(exact, input_gradient(f, x).square().sum(-1))
    assert exact.requires_grad  # kept in the graph so that it can be minimised
    exact.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in f.parameters() if p.dim() > 1)
