"""benchmark/stats.py: the power of the paired t-test and its minimum detectable effect, against textbook
values. (The coverage of every printed interval, by simulation: tests/test_coverage.py.)"""

import math

import pytest


def test_power_of_the_paired_t_test_matches_gpower():
    """G*Power 3.1 (t tests, means, difference from constant (one sample case), two tails): effect size
    d = 0.5, alpha 0.05, power 0.80 -> total sample size 34, actual power 0.8077775."""
    from benchmark.stats import mde, paired_power, seeds_needed

    assert seeds_needed(0.5, 1.0) == 34
    assert paired_power(0.5, 1.0, 34) == pytest.approx(0.8077775, abs=1e-6)
    assert paired_power(0.5, 1.0, 33) < 0.8
    # d = 0.8 -> n = 15 (G*Power: actual power 0.8213105); the MDE is the inverse of the power curve
    assert seeds_needed(0.8, 1.0) == 15 and paired_power(0.8, 1.0, 15) == pytest.approx(0.8213105, abs=1e-6)
    assert paired_power(mde(2.0, 5), 2.0, 5) == pytest.approx(0.8, abs=1e-9)
    assert mde(2.0, 5, alpha=0.01) > mde(2.0, 5) > mde(2.0, 10)  # stricter alpha or fewer seeds: larger MDE
    assert math.isnan(mde(1.0, 1)) and math.isnan(seeds_needed(1.0, 0.0))


def test_power_at_holms_strictest_step_is_not_a_step_function():
    """At n = 3 and alpha/16, scipy's nct returns nan for the lower tail; the power must still be the
    noncentral t's: P(T > t_crit) = 0.7450169 for delta 7, SD 0.58 (scipy's nct.sf alone, finite there),
    not 1, and the MDE there 7.598 points, not the 50%-power 5.98 that a 0/1 fallback gave (crit * SD / sqrt(n))."""
    from scipy import stats

    from benchmark.stats import mde, paired_power

    alpha = 0.05 / 16
    crit = stats.t.ppf(1 - alpha / 2, 2)
    upper = stats.nct.sf(crit, 2, 7.0 * math.sqrt(3) / 0.58)
    assert upper == pytest.approx(0.7450169, abs=1e-6)
    assert paired_power(7.0, 0.58, 3, alpha) == pytest.approx(upper, abs=1e-9)
    assert paired_power(5.0, 0.58, 3, alpha) == pytest.approx(0.5027968, abs=1e-6)
    assert mde(0.58, 3, alpha) == pytest.approx(7.598, abs=1e-3)
    assert paired_power(mde(0.58, 3, alpha), 0.58, 3, alpha) == pytest.approx(0.8, abs=1e-9)
