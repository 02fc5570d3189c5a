"""EER/minDCF against an independent brute-force threshold sweep; the 10x10 crop scoring by hand."""

import numpy as np
import pytest
import torch

from tasks.voxceleb.scoring import add_noise, crop_starts, eer_and_mindcf, eval_crops, trial_scores


def brute_force(scores, labels, p=0.01):
    """Sweep every threshold (accept if s >= t), highest first, plus +inf (accept nothing)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, int)
    n_t, n_n = labels.sum(), (1 - labels).sum()
    best, eer, dcf = None, None, np.inf
    for t in [np.inf] + sorted(set(scores.tolist()), reverse=True):
        acc = scores >= t
        p_fa = (acc & (labels == 0)).sum() / n_n
        p_miss = (~acc & (labels == 1)).sum() / n_t
        gap = abs(p_miss - p_fa)
        if best is None or gap < best:
            best, eer = gap, max(p_fa, p_miss) * 100
        dcf = min(dcf, p_miss * p + p_fa * (1 - p))
    return eer, dcf / min(p, 1 - p)


@pytest.mark.parametrize("seed", range(5))
def test_eer_mindcf_random_scores(seed):
    g = np.random.default_rng(seed)
    labels = g.integers(0, 2, 400)
    scores = g.normal(size=400) + labels * g.uniform(0.5, 2)
    eer, dcf = eer_and_mindcf(scores, labels)
    ref_eer, ref_dcf = brute_force(scores, labels)
    assert abs(eer - ref_eer) < 1e-6 and abs(dcf - ref_dcf) < 1e-6


@pytest.mark.parametrize("seed", range(5))
def test_eer_mindcf_tied_scores(seed):
    g = np.random.default_rng(100 + seed)
    labels = g.integers(0, 2, 300)
    scores = np.round(g.normal(size=300) + labels, 1)  # many ties
    eer, dcf = eer_and_mindcf(scores, labels)
    ref_eer, ref_dcf = brute_force(scores, labels)
    assert abs(eer - ref_eer) < 1e-6 and abs(dcf - ref_dcf) < 1e-6


def test_eer_hand_computed():
    # targets 0.9, 0.4; non-targets 0.6, 0.1: at t=0.6 miss 1/2, fa 1/2 -> EER 50%
    assert eer_and_mindcf([0.9, 0.4, 0.6, 0.1], [1, 1, 0, 0])[0] == pytest.approx(50.0)
    assert eer_and_mindcf([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == (0.0, 0.0)


def test_ten_by_ten_crop_scoring_by_hand():
    # crops: file A's 10 crops all at e1 except one at e2; file B's all at e1.
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    a = torch.stack([e1] * 9 + [e2])
    b = torch.stack([e1] * 10)
    emb = torch.stack([a, b])
    # 90 distances are 0 and 10 are sqrt(2): score = -(10 * sqrt 2) / 100
    s = trial_scores(emb, torch.tensor([0, 1]), torch.tensor([1, 1]))
    assert s[0].item() == pytest.approx(-np.sqrt(2) / 10) and s[1].item() == 0.0


def test_crops_linspace_and_wrap_padding():
    assert list(crop_starts(100, 10, 10)) == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    short = np.arange(5, dtype=float)
    c = eval_crops(short, 8, 10)
    assert c.shape == (10, 8) and list(c[0]) == [0, 1, 2, 3, 4, 0, 1, 2]


def test_noise_mixing_hits_the_requested_snr():
    g = np.random.default_rng(0)
    clean, noise = g.normal(size=16000), g.normal(size=5000) * 0.5
    for delta in (15, 10, 5):
        mixed = add_noise(clean, noise, delta)
        # db() adds 1e-4 to the power (voxceleb_trainer): exact SNR up to that floor (< 0.02 dB here)
        snr = 10 * np.log10(np.mean(clean**2) / np.mean((mixed - clean) ** 2))
        assert snr == pytest.approx(delta, abs=0.02)
        assert len(mixed) == len(clean)
