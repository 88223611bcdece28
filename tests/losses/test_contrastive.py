"""The ConVIRT loss against a loop-based reference of the paper's formula (Eq. 2-4)."""

import math

import pytest
import torch

from convirt.errors import ConfigError
from convirt.losses import ContrastiveLoss, bidirectional_nce


def reference_loss(v: torch.Tensor, u: torch.Tensor, tau: float, lam: float) -> float:
    """Literal transcription of the paper's formula with Python loops and math.exp."""
    n = v.shape[0]

    def cos(a, b):
        return float(a @ b) / (float(a.norm()) * float(b.norm()))

    total = 0.0
    for i in range(n):
        v2u = -math.log(math.exp(cos(v[i], u[i]) / tau) / sum(math.exp(cos(v[i], u[k]) / tau) for k in range(n)))
        u2v = -math.log(math.exp(cos(u[i], v[i]) / tau) / sum(math.exp(cos(u[i], v[k]) / tau) for k in range(n)))
        total += lam * v2u + (1 - lam) * u2v
    return total / n


@pytest.mark.parametrize("n", [1, 2, 7, 32])
@pytest.mark.parametrize("tau,lam", [(0.1, 0.75), (0.07, 0.5), (1.0, 0.0), (0.5, 1.0)])
def test_matches_reference(n, tau, lam):
    g = torch.Generator().manual_seed(n * 100 + int(tau * 100))
    v = torch.randn(n, 16, generator=g, dtype=torch.float64)
    u = torch.randn(n, 16, generator=g, dtype=torch.float64)
    expected = reference_loss(v, u, tau, lam)
    assert bidirectional_nce(v, u, tau, lam).item() == pytest.approx(expected, rel=1e-5)
    assert ContrastiveLoss(tau, lam)(v, u).item() == pytest.approx(expected, rel=1e-5)


def test_asymmetric_weight_matters():
    g = torch.Generator().manual_seed(0)
    v, u = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    assert bidirectional_nce(v, u, 0.1, 1.0).item() != pytest.approx(bidirectional_nce(v, u, 0.1, 0.0).item())


def test_perfect_alignment_gives_low_loss_and_random_gives_log_n():
    n = 16
    v = torch.eye(n)
    assert bidirectional_nce(v, v.clone(), 0.1, 0.75).item() < 1e-3
    same = torch.ones(n, 8)  # all similarities equal: loss is exactly log(N)
    assert bidirectional_nce(same, same, 0.1, 0.75).item() == pytest.approx(math.log(n), rel=1e-6)


def test_paper_defaults():
    loss = ContrastiveLoss()
    assert loss.temperature == 0.1
    assert loss.image_weight == 0.75


def test_gradients_match_reference_autograd():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    u = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    bidirectional_nce(v, u, 0.2, 0.3).backward()
    # independent gradient by central finite differences of the loop reference
    eps = 1e-6
    for tensor, grad in ((v, v.grad), (u, u.grad)):
        for idx in [(0, 0), (2, 3), (4, 5)]:
            with torch.no_grad():
                tensor[idx] += eps
                plus = reference_loss(v.detach(), u.detach(), 0.2, 0.3)
                tensor[idx] -= 2 * eps
                minus = reference_loss(v.detach(), u.detach(), 0.2, 0.3)
                tensor[idx] += eps
            assert grad[idx].item() == pytest.approx((plus - minus) / (2 * eps), rel=1e-4, abs=1e-8)


def test_bf16_inputs_are_computed_in_float32():
    g = torch.Generator().manual_seed(1)
    v, u = torch.randn(8, 32, generator=g), torch.randn(8, 32, generator=g)
    exact = reference_loss(v.double(), u.double(), 0.1, 0.75)
    got = bidirectional_nce(v.bfloat16(), u.bfloat16(), 0.1, 0.75)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(exact, rel=2e-2)


def test_learnable_temperature_is_a_parameter():
    loss = ContrastiveLoss(0.07, 0.5, learn_temperature=True)
    assert any(p is loss.log_temperature for p in loss.parameters())
    v, u = torch.randn(4, 8), torch.randn(4, 8)
    loss(v, u).backward()
    assert loss.log_temperature.grad is not None


@pytest.mark.parametrize("tau,lam", [(0.0, 0.5), (-1.0, 0.5), (0.1, -0.1), (0.1, 1.5)])
def test_rejects_bad_parameters(tau, lam):
    with pytest.raises(ConfigError):
        ContrastiveLoss(tau, lam)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        ContrastiveLoss()(torch.randn(4, 8), torch.randn(3, 8))
