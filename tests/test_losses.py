"""Loss functions on hand-computed tensors, gradient flow, and the probe model's pieces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probekit.probe import losses
from probekit.probe.goals import GoalIndex
from probekit.probe.network import ProbeModel


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_bradley_terry_hand_values():
    r_c, r_r = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    expected = (-math.log(sig(1.0)) - math.log(sig(0.0))) / 2
    assert losses.bradley_terry(r_c, r_r).item() == pytest.approx(expected, rel=1e-6)
    expected_margin = (-math.log(sig(0.5)) - math.log(sig(-0.5))) / 2
    assert losses.bradley_terry(r_c, r_r, margin=0.5).item() == pytest.approx(expected_margin, rel=1e-6)
    # Very confident and very wrong pairs stay finite (logsigmoid, not log(sigmoid)).
    big = losses.bradley_terry(torch.tensor([-200.0]), torch.tensor([200.0]))
    assert big.item() == pytest.approx(400.0, rel=1e-6)


def test_contrastive_hand_values():
    pos = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    neg = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    pair0 = -math.log(0.5) - math.log(1 - 0.5)
    pair1 = -math.log((sig(1.0) + sig(-1.0)) / 2) - math.log(1 - sig(1.0))
    assert losses.contrastive(pos, neg).item() == pytest.approx((pair0 + pair1) / 2, rel=1e-6)


def test_contrastive_is_numerically_safe():
    pos = torch.tensor([[-1e4, -1e4]], requires_grad=True)
    neg = torch.tensor([[1e4, 1e4]], requires_grad=True)
    loss = losses.contrastive(pos, neg)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()


def test_contrastive_prefers_aligned_goals():
    good = losses.contrastive(torch.ones(3, 4), -torch.ones(3, 4))
    bad = losses.contrastive(-torch.ones(3, 4), torch.ones(3, 4))
    assert good < bad


def test_lambda_zero_is_exactly_bt_and_skips_contrastive(monkeypatch):
    r_c, r_r = torch.randn(5), torch.randn(5)

    def boom(*_a, **_k):
        raise AssertionError("contrastive computed with lam=0")

    monkeypatch.setattr(losses, "contrastive", boom)
    total, parts = losses.total_loss(r_c, r_r, torch.randn(5, 3), torch.randn(5, 3), lam=0.0)
    assert torch.equal(total, losses.bradley_terry(r_c, r_r))
    assert parts["contrastive"] == 0.0


def test_total_loss_adds_lambda_times_contrastive():
    r_c, r_r = torch.randn(4), torch.randn(4)
    pos, neg = torch.rand(4, 3) * 2 - 1, torch.rand(4, 3) * 2 - 1
    total, parts = losses.total_loss(r_c, r_r, pos, neg, lam=0.7, margin=0.1)
    expected = losses.bradley_terry(r_c, r_r, 0.1) + 0.7 * losses.contrastive(pos, neg)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["total"] == pytest.approx(expected.item(), rel=1e-6)


def _grads(model):
    return {n: (p.grad is not None and bool(p.grad.abs().sum() > 0)) for n, p in model.named_parameters()}


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_gradient_flows_to_encoder_and_reward_head(head):
    torch.manual_seed(0)
    model = ProbeModel(8, "mlp", (16,), rep_size=6, head=head, head_hidden=5)
    x = torch.randn(2, 4, 8)
    z = model.encode(x)
    r = model.reward(z[:, -1])
    pos = F.cosine_similarity(z[0, :2], z[0, 2:], dim=-1)[None]
    neg = F.cosine_similarity(z[0], z[1], dim=-1)[None]
    total, _ = losses.total_loss(r[:1], r[1:], pos, neg, lam=0.5)
    total.backward()
    grads = _grads(model)
    last_bias = f"head.{len(model.head) - 1}.bias"  # cancels in r_c - r_r: no gradient, by design
    assert all(v for n, v in grads.items() if n != last_bias), grads

    # The contrastive term alone trains φ but never the reward head.
    model.zero_grad(set_to_none=True)
    z = model.encode(x)
    losses.contrastive(F.cosine_similarity(z[0, :2], z[0, 2:], dim=-1)[None], F.cosine_similarity(z[0], z[1], dim=-1)[None]).backward()
    grads = _grads(model)
    assert all(v for n, v in grads.items() if n.startswith("encoder"))
    assert not any(v for n, v in grads.items() if n.startswith("head"))


def test_model_shapes_and_linear_encoder():
    model = ProbeModel(8, "linear", rep_size=4)
    assert len([m for m in model.encoder if isinstance(m, torch.nn.Linear)]) == 1
    z, r = model(torch.randn(3, 5, 8))
    assert z.shape == (3, 5, 4) and r.shape == (3, 5)
    mlp = ProbeModel(8, "mlp", (16, 12), rep_size=4, head="mlp")
    assert [m.out_features for m in mlp.encoder if isinstance(m, torch.nn.Linear)] == [16, 12, 4]
    assert ProbeModel(**mlp.config()).config() == mlp.config()


def test_input_normalisation_handles_outliers_and_constant_features():
    model = ProbeModel(3, "linear", rep_size=2)
    x = np.array([[1000.0, 1.0, 5.0], [3000.0, 3.0, 5.0]])
    model.set_normalization(x.mean(0), x.std(0))
    assert model.in_std.tolist() == [1000.0, 1.0, 1.0]  # constant feature: std 1, not 0
    normalised = (torch.tensor(x, dtype=torch.float32) - model.in_mean) / model.in_std
    assert torch.allclose(normalised, torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 0.0]]))
    assert "in_mean" in model.state_dict() and "in_std" in model.state_dict()


@pytest.mark.parametrize("encoder,widths", [("mlp", (16, 12)), ("linear", ())])
@pytest.mark.parametrize("mean7,folds_mean", [(0.3, True), (5.0, False)])
def test_folded_encoder_equals_encode(encoder, widths, mean7, folds_mean):
    torch.manual_seed(0)
    model = ProbeModel(8, encoder, widths, rep_size=4)
    # feature 7 has std 0.01, so |mean|/std is 30 (folded) or 500 (centred first: folding would cancel badly)
    std = torch.tensor([1000.0, 1, 1, 1, 50, 1, 1, 0.01])
    x = torch.randn(64, 8) * std + torch.tensor([300.0, 0, 0, 0, -20, 0, 0, mean7])
    model.set_normalization(x.mean(0).numpy(), x.std(0).numpy())
    folded = model.folded_encoder()
    assert (len(folded) == len(model.encoder)) == folds_mean  # an extra centring layer only when needed
    with torch.no_grad():
        expected = model.encode(x)
        got = folded(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    # an independent inference copy: no gradients, and changing it leaves the model alone
    assert not any(p.requires_grad for p in folded.parameters())
    with torch.no_grad():
        folded[-1].weight.zero_()
    assert list(model.encoder)[-1].weight.abs().sum() > 0


def test_q_values_cosine_and_max_over_prototypes():
    z = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]], dtype=np.float32)
    one = GoalIndex(np.array([[2.0, 0.0]])).q_values(z)
    np.testing.assert_allclose(one, [1.0, 0.0, -1.0], atol=1e-6)
    two = GoalIndex(np.array([[2.0, 0.0], [0.0, -1.0]])).q_values(z)
    np.testing.assert_allclose(two, [1.0, 0.0, 0.0], atol=1e-6)
