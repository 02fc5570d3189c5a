"""Every interval the report prints holds its coverage, and Holm's correction its family-wise error rate: data
drawn with known effects and variance components like the measured ones, the report's own functions applied,
the empirical rate compared with the nominal one within Monte-Carlo error (3 standard errors)."""

import math

import numpy as np
import pandas as pd
import pytest

from benchmark.stats import Paired, crossed_difference, crossed_interval, holm, holm_adjust, paired_difference, paired_interval

# The teacher-instance runs (cifar100-kd, 3 teachers x 3 student seeds, KD): a teacher x seed decomposition of
# KD - baseline gave MS_teacher 0.84, MS_seed 3.06, MS_residual 0.12, i.e. variance components
# teacher (0.84 - 0.12) / 3 = 0.24, seed (3.06 - 0.12) / 3 = 0.98, residual 0.12.
TEACHER_VAR, SEED_VAR, RESIDUAL_VAR = 0.24, 0.98, 0.12


def mc_band(reps: int, rate: float) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / reps)


@pytest.mark.parametrize("n", [3, 5])
def test_the_paired_interval_covers_95_percent(n):
    rng, reps, delta = np.random.default_rng(n), 20000, 1.3
    base = rng.normal(50, 1.0, (reps, n))
    method = base + delta + rng.normal(0, 1.05, (reps, n))  # a seed's noise shared by both arms, plus its own
    mean, lo, hi, p = paired_interval(method - base)
    rate = np.mean((lo <= delta) & (delta <= hi))
    assert abs(rate - 0.95) <= mc_band(reps, 0.95), rate
    seeds = [str(s) for s in range(n)]
    for i in range(20):  # the report's function prints exactly these intervals
        c = paired_difference(pd.Series(method[i], seeds), pd.Series(base[i], seeds))
        assert (c.mean, c.lo, c.hi, c.p) == pytest.approx((mean[i], lo[i], hi[i], p[i]))


def crossed_draw(rng, reps: int, k: int, n: int, delta: float, var=(TEACHER_VAR, SEED_VAR, RESIDUAL_VAR)):
    """Gains [reps, k, n] of k teachers on n shared student seeds: delta + teacher + seed + residual."""
    return (
        delta
        + rng.normal(0, math.sqrt(var[0]), (reps, k, 1))
        + rng.normal(0, math.sqrt(var[1]), (reps, 1, n))
        + rng.normal(0, math.sqrt(var[2]), (reps, k, n))
    )


@pytest.mark.parametrize("var", [(0.0, 0.0, 0.6), (0.01, 0.05, 0.6), (1.0, 0.0, 0.1), (0.0, 1.0, 0.1)])
def test_the_crossed_interval_holds_its_coverage_when_a_component_is_near_zero(var):
    """PKT's teacher-instance gains (teacher and seed components near 0, residual 0.6): without truncating a
    negative component the interval was [-9.57, +21.48]; with it, coverage stays at or above 95 %."""
    rng, reps = np.random.default_rng(int(sum(var) * 100)), 20000
    for k, n in ((3, 3), (5, 5)):
        _, lo, hi, *_ = crossed_interval(crossed_draw(rng, reps, k, n, 6.0, var))
        rate = np.mean((lo <= 6.0) & (6.0 <= hi))
        assert 0.95 - mc_band(reps, 0.95) <= rate <= 0.997, (k, n, rate)


@pytest.mark.parametrize("k, n", [(3, 3), (5, 5)])
def test_the_crossed_teacher_interval_holds_its_coverage_and_the_old_one_does_not(k, n):
    rng, reps, delta = np.random.default_rng(k * 10 + n), 20000, 6.0
    d = crossed_draw(rng, reps, k, n, delta)
    mean, lo, hi, *_ = crossed_interval(d)
    new = np.mean((lo <= delta) & (delta <= hi))
    # the interval the teacher-instance table printed before: a t-test over the k teachers' mean gains
    _, old_lo, old_hi, _ = paired_interval(d.mean(-1))
    old = np.mean((old_lo <= delta) & (delta <= old_hi))
    band = mc_band(reps, 0.95)
    # Satterthwaite's interval is conservative at k = n = 3 (about 97 %), near 95 % at k = n = 5: never below
    assert new >= 0.95 - band, new
    assert new <= 0.98, new  # conservative, not uselessly wide
    if (k, n) == (5, 5):
        assert abs(new - 0.95) <= band, new
    # the old interval ignores the seed noise common to every teacher: far below 95 % (about 82 % at k = n = 3)
    assert old < 0.95 - 3 * band, old
    for i in range(20):  # the report's function prints exactly these intervals
        c = crossed_difference(pd.DataFrame(d[i]))
        assert (c.mean, c.lo, c.hi) == pytest.approx((mean[i], lo[i], hi[i]))


def test_the_crossed_interval_reproduces_the_measured_case():
    """The decomposition's figures: SE = sqrt((0.84 + 3.06 - 0.12) / 9) = 0.648 with about 2.8 degrees of
    freedom, against the old SE sqrt(0.84 / 9) = 0.306: [+4.40, +8.66] where the report printed [+5.22, +7.84]."""
    t = np.array([-1, 0, 1]) * math.sqrt(0.84 / 3)  # MS_teacher = n * sum(row effects^2) / (k - 1) = 0.84
    s = np.array([-1, 0, 1]) * math.sqrt(3.06 / 3)  # MS_seed = 3.06
    e = np.array([[1, -1, 0], [-1, 1, 0], [0, 0, 0]]) * math.sqrt(0.12)  # double-centred: MS_residual 0.12
    d = 6.53 + t[:, None] + s[None, :] + e
    mean, lo, hi, p, se, df = crossed_interval(d)
    assert mean == pytest.approx(6.53) and se == pytest.approx(math.sqrt((0.84 + 3.06 - 0.12) / 9))
    assert df == pytest.approx(3.78**2 / (0.84**2 / 2 + 3.06**2 / 2 + 0.12**2 / 4))
    assert (lo, hi) == pytest.approx((4.40, 8.66), abs=0.02)  # the review's [+4.40, +8.66]
    _, old_lo, old_hi, _ = paired_interval(d.mean(-1))
    assert (old_lo, old_hi) == pytest.approx((5.22, 7.84), abs=0.02)  # what the report printed: too narrow


@pytest.mark.parametrize("shared_baseline", [False, True])
def test_holm_keeps_the_family_wise_error_rate_at_5_percent(shared_baseline):
    """13 null comparisons with the baseline at n = 3 seeds (a cross-modal table): the chance that any is
    declared significant after Holm is at most 5 % (about 4.9 % for independent comparisons; less when they
    share a baseline, which correlates them); without the correction it is far above."""
    rng, reps, m, n = np.random.default_rng(7 + shared_baseline), 20000, 13, 3
    base = rng.normal(50, 1, (reps, 1 if shared_baseline else m, n))
    p = paired_interval(rng.normal(50, 1, (reps, m, n)) - base)[3]
    any_holm = np.mean((holm_adjust(p) < 0.05).any(-1))
    band = mc_band(reps, 0.05)
    assert any_holm <= 0.05 + band, any_holm
    if not shared_baseline:
        assert abs(any_holm - (1 - (1 - 0.05 / m) ** m)) <= band, any_holm
    assert np.mean((p < 0.05).any(-1)) > 0.3  # the uncorrected table would claim something nearly every other time
    family = [Paired(0.0, -1.0, 1.0, n, float(x)) for x in p[0]]  # the report's holm() gives the same adjustment
    holm(family)
    assert [c.p_adj for c in family] == pytest.approx(list(holm_adjust(p[0])))
