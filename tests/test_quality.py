import torch

from methods.ours import QualityWeights


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
    norms = torch.tensor([1.0, 2.0, 3.0, 100.0]) * 3 ** 0.5
    w = q(base * norms[:, None] / 3 ** 0.5, base)
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
