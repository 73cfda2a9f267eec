"""R1 / R2 gradient penalties, exact and approximated (docs/method.md §4.3).

The approximation replaces the squared input-gradient norm by a finite difference along a random
direction: ((D(x) - D(x + sigma*eps)) / sigma)^2 has expectation ||grad D(x)||^2 as sigma -> 0,
costs one more forward pass and needs no double backpropagation.
"""

import torch

PENALTY_MODES = ("approx", "exact", "none")


def finite_difference_penalty(logits: torch.Tensor, perturbed_logits: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-sample ((D(x) - D(x + sigma*eps)) / sigma)^2; gradients flow through both terms."""
    return ((logits - perturbed_logits) / sigma).square()


def exact_gradient_penalty(logits: torch.Tensor, inputs: torch.Tensor, batch_dim: int = 0) -> torch.Tensor:
    """Per-sample ||d logits / d inputs||^2, kept differentiable (create_graph) so it can be
    minimised. `batch_dim` names the sample axis of `inputs` ([K, B, ...] stacks use 1)."""
    (grad,) = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    other_dims = [d for d in range(grad.dim()) if d != batch_dim]
    return grad.square().sum(dim=other_dims)
