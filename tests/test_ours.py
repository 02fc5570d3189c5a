"""methods/ours.py, the paper's method: the margin distances, the projection head, the shared classifier and the
quality weights against float64 references and hand-computed values written here."""

import math

import numpy as np
import pytest
import torch

from benchmark.types import TeacherOut
from loss_inputs import DS, DT, ET, B, Y, make, normalize, rng, softmax, student_out, t
from methods.ours import ProjectionHead, QualityWeights, margin_distance


@pytest.mark.parametrize("mode", ["l2sq_norm_sum", "l2sq_raw_mean", "l2sq_raw_sum"])
def test_margin_l2_modes_reference(mode):
    fs, ft = rng.normal(size=(B, DT)), rng.normal(size=(B, DT))
    d = {
        "l2sq_norm_sum": ((normalize(fs) - normalize(ft)) ** 2).sum(1),
        "l2sq_raw_mean": ((fs - ft) ** 2).mean(1),
        "l2sq_raw_sum": ((fs - ft) ** 2).sum(1),
    }[mode]
    m = float(np.median(d))
    ref = np.maximum(d - m, 0)
    out = margin_distance(t(fs), t(ft), mode, m, 0, "angle").numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-9)
    assert (out[d <= m] == 0).all()


def test_cosine_margin_hand_computed():
    fs = t([[1.0, 0.0]])
    ft40 = t([[math.cos(math.radians(40)), math.sin(math.radians(40))]])
    ft20 = t([[math.cos(math.radians(20)), math.sin(math.radians(20))]]) * 7
    # R2 (angle): zero inside 30 degrees, cos30 - cos40 = 0.866025 - 0.766044 outside
    assert margin_distance(fs, ft40, "cos", 0, 30, "angle").item() == pytest.approx(0.0999816, abs=1e-6)
    assert margin_distance(fs, ft20, "cos", 0, 30, "angle").item() == 0.0
    # R1 (literal distance m = cos 30): 1 - cos40 - cos30 < 0 -> zero; at 120 degrees 1.5 - 0.866
    ft120 = t([[math.cos(math.radians(120)), math.sin(math.radians(120))]])
    assert margin_distance(fs, ft40, "cos", 0, 30, "distance").item() == 0.0
    assert margin_distance(fs, ft120, "cos", 0, 30, "distance").item() == pytest.approx(1.5 - 0.8660254, abs=1e-6)
    # margin 0: the hard cosine distance of Eq. 5
    assert margin_distance(fs, ft40, "cos", 0, 0, "angle").item() == pytest.approx(1 - 0.7660444, abs=1e-6)


def test_projection_head_mixes_frozen_and_mlp():
    e = t(ET)
    head = ProjectionHead(DT, DT, 0.6).double()
    ref = 0.6 * e + 0.4 * head.mlp(e)
    assert torch.allclose(head(e), ref)
    assert torch.allclose(ProjectionHead(DT, DT, 1.0).double()(e), e)
    assert ProjectionHead(DT, DS, 0.6)(e.float()).shape == (B, DS)


def test_ours_classifier_reference():
    m = make("ours_classifier", ds=DT, beta=2.0)
    s = student_out(fs=rng.normal(size=(B, DT)))
    f_t = m.head(t(ET)).detach().numpy()
    w, b = s.classifier.weight.detach().numpy(), s.classifier.bias.detach().numpy()
    z_s, z_t = s.embedding.detach().numpy() @ w.T + b, f_t @ w.T + b

    def ce(z):
        return -np.log(softmax(z)[np.arange(B), Y])

    terms = m.terms(s, TeacherOut(t(ET)), torch.tensor(Y))
    total = sum(v.weighted_mean() for v in terms.values()).item()
    ref = np.concatenate([ce(z_s), ce(z_t)]).mean() + 2.0 * ((z_s - z_t) ** 2).mean()
    assert total == pytest.approx(ref, rel=1e-6)
    assert make("ours_classifier", classifier_ce="replace").ce_weight == 0.0


def test_ours_feature_quality_weights_the_per_sample_margin_loss():
    m = make("ours_feature_quality", ds=DT, margin=0.0)
    s = student_out(fs=rng.normal(size=(B, DT)))
    plain = margin_distance(s.embedding, m.head(t(ET)), "l2sq_norm_sum", 0.0, 30, "angle")
    m.quality.train()
    w_ref = m.quality.__class__(m.hp.quality_source).double()(t(ET), s.embedding)
    got = m.terms(s, TeacherOut(t(ET)), torch.tensor(Y))["feature"].value
    assert torch.allclose(got, w_ref * plain)


def test_invalid_choice_is_refused():
    from benchmark.registry import UsageError

    with pytest.raises(UsageError, match="feat_dist"):
        make("ours_feature", feat_dist="l1")


def test_weights_average_to_w_base_on_first_batch():
    q = QualityWeights("both_mean", w_base=1.0, h=1 / 3).double()
    g = torch.Generator().manual_seed(0)
    e_t = torch.randn(64, 16, generator=g, dtype=torch.float64) * 2
    f_s = torch.randn(64, 16, generator=g, dtype=torch.float64)
    w = q(e_t, f_s)
    # first batch initialises mu/sigma to its own statistics: z has mean 0 (no clipping at |z|<=1)
    assert abs(w.mean().item() - 1.0) < 1e-9
    assert not w.requires_grad


def test_clip_bounds_ema_and_eval_freeze():
    q = QualityWeights("teacher", w_base=1.0, h=1 / 3, momentum=0.01)
    base = torch.ones(4, 3)
    q(base * torch.tensor([[1.0], [2.0], [3.0], [4.0]]), base)
    mu0 = q.mu_t.item()
    norms = torch.tensor([1.0, 2.0, 3.0, 100.0]) * 3**0.5
    w = q(base * norms[:, None] / 3**0.5, base)
    assert w.min() >= 0.0 and w.max() <= 2.0 and w.max() == 2.0  # clipped at w_base + 1
    expected = 0.99 * mu0 + 0.01 * norms.clamp(0.001, 100).mean().item()
    assert abs(q.mu_t.item() - expected) < 1e-5
    q.eval()
    before = q.mu_t.clone()
    q(base * 50, base)
    assert torch.equal(before, q.mu_t)


def test_student_source_uses_student_norms_only():
    q = QualityWeights("student")
    w = q(torch.randn(8, 4), torch.ones(8, 4))  # all student norms equal -> z = 0
    assert torch.allclose(w, torch.ones(8))
