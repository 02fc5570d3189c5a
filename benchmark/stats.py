"""How numbers over seeds are summarised, in one place: mean ± sample std over distinct seeds, and the
paired difference against the baseline over matched seeds with a t-based 95% confidence interval and a
two-sided paired t-test p-value; across the comparisons of one table (a family) the p-values are adjusted
with Holm's step-down method, and only an adjusted p below 0.05 earns a star. The raw interval is shown
as computed (it is not widened by the correction)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd


def per_seed(values: pd.Series, seeds: pd.Series) -> pd.Series:
    """One value per distinct seed (the last run of a seed wins: reruns of a seed are not extra samples)."""
    s = pd.Series(pd.to_numeric(values, errors="coerce").values, index=seeds.astype(str).values).dropna()
    return s[~s.index.duplicated(keep="last")]


def fmt_mean_std(mean: float, std: float, n: int) -> str:
    """'m ± s (n=k)'; one seed has no spread: 'm ± n/a (n=1)'; none: 'n/a'."""
    if not n:
        return "n/a"
    return f"{mean:.2f} ± n/a (n=1)" if n == 1 else f"{mean:.2f} ± {std:.2f} (n={n})"


def describe(v: pd.Series) -> str:
    """'m ± s (n=k)' over distinct seeds."""
    s = summary(v)
    return fmt_mean_std(s["mean"], s["std"], int(s["n"]))


ALPHA = 0.05


@dataclass
class Paired:
    mean: float
    lo: float
    hi: float
    n: int
    p: float = math.nan  # two-sided paired t-test against zero (nan: n < 2 or no spread)
    p_adj: float | None = None  # Holm-adjusted within its family (None: not adjusted)
    sd: float = math.nan  # sample SD of the paired differences (power, benchmark.stats.mde)
    df: float = math.nan  # the test's degrees of freedom when not n - 1 (crossed_difference)

    @property
    def no_spread(self) -> bool:
        return self.n >= 2 and math.isnan(self.p)

    @property
    def raw_significant(self) -> bool:
        """The raw 95% interval excludes zero (no correction for the other comparisons)."""
        return self.n >= 2 and not self.no_spread and (self.lo > 0 or self.hi < 0)

    @property
    def significant(self) -> bool:
        """Significant after the family-wise correction (the adjusted p when adjusted, else the raw one)."""
        p = self.p if self.p_adj is None else self.p_adj
        return self.n >= 2 and not math.isnan(p) and p < ALPHA

    def as_dict(self, prefix: str = "delta") -> dict[str, float | bool | int]:
        """The comparison as numbers: mean, CI bounds, n, raw and Holm-adjusted p, the star."""
        return {
            prefix: self.mean,
            f"{prefix}_ci_low": self.lo,
            f"{prefix}_ci_high": self.hi,
            f"{prefix}_n": self.n,
            "p": self.p,
            "p_holm": math.nan if self.p_adj is None else self.p_adj,
            "significant": self.significant,
        }

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:+.2f} (n=1, no CI)"
        if self.no_spread:
            return f"{self.mean:+.2f} (n={self.n}, no spread)"
        adj = "" if self.p_adj is None else f" p_Holm={self.p_adj:.2g}"
        return f"{self.mean:+.2f} [{self.lo:+.2f}, {self.hi:+.2f}] (n={self.n}){adj}{' *' if self.significant else ''}"


def summary(v: pd.Series) -> dict[str, float]:
    """mean, sample std (nan with one seed), n and the t-based 95% CI of the mean, as numbers."""
    v = v.dropna().astype(float)
    n = len(v)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0, "ci_low": math.nan, "ci_high": math.nan}
    mean, sd = float(v.mean()), float(v.std(ddof=1)) if n > 1 else math.nan
    half = math.nan
    if n > 1:
        from scipy import stats

        half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "std": sd, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def comparison_record(p: "Paired | None") -> dict[str, float | bool | int]:
    """A comparison's numeric columns (delta, its CI, n, p, p_holm, significant); NaN / 0 / False without one."""
    return (p or Paired(math.nan, math.nan, math.nan, 0)).as_dict()


def holm(family: list[Paired | None]) -> None:
    """Holm's step-down adjustment over one family of comparisons, in place (p_adj). Every member counts in the
    family's size m, the comparisons that could not be tested too (None: no finished run or no matched seed; one
    seed; no spread): a table set out to make them, so they are untested members that are never rejected (as if
    p = 1, last in the order), and the tested ones are adjusted over all m. A failed method therefore never makes
    another method's verdict easier."""
    tested = [x for x in family if x is not None and x.n >= 2 and not math.isnan(x.p)]
    for x, adj in zip(tested, holm_adjust([x.p for x in tested], len(family))):
        x.p_adj = float(adj)


def holm_adjust(p, m: int | None = None):
    """Holm's adjusted p-values of p [..., t] (vectorised over leading axes) in a family of m >= t members (the
    untested ones count as p = 1)."""
    import numpy as np

    p = np.asarray(p, dtype=float)
    m = p.shape[-1] if m is None else m
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, -1) * (m - np.arange(p.shape[-1]))
    ranked = np.minimum(1.0, np.maximum.accumulate(ranked, axis=-1))
    out = np.empty_like(ranked)
    np.put_along_axis(out, order, ranked, -1)
    return out


def paired_difference(method: pd.Series, baseline: pd.Series) -> Paired | None:
    """method - baseline over the seeds both have (Series indexed by seed); None without a matched seed."""
    d = (method - baseline).dropna()
    if d.empty:
        return None
    if len(d) < 2:
        return Paired(float(d.iloc[0]), math.nan, math.nan, 1)
    sd = float(d.std(ddof=1))
    if not sd > 1e-12 * max(1.0, abs(float(d.mean()))):  # every seed the same difference: no interval, no test
        return Paired(float(d.mean()), float(d.mean()), float(d.mean()), len(d))
    mean, lo, hi, p = (float(v) for v in paired_interval(d.to_numpy(dtype=float)))
    return Paired(mean, lo, hi, len(d), p, sd=sd)


def paired_interval(d):
    """The paired t interval and two-sided p of differences d [..., n] (vectorised over leading axes): mean,
    low, high, p. paired_difference prints it; tests/test_coverage.py checks its coverage with many at once."""
    import numpy as np
    from scipy import stats

    d = np.asarray(d, dtype=float)
    n = d.shape[-1]
    mean, se = d.mean(-1), d.std(-1, ddof=1) / math.sqrt(n)
    half = stats.t.ppf(0.975, n - 1) * se
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * stats.t.sf(np.abs(mean) / se, n - 1)
    return mean, mean - half, mean + half, p


def crossed_difference(d: pd.DataFrame) -> Paired | None:
    """The mean gain over k teacher instances and n student seeds when the teachers share the student's seeds
    (and so the baseline's): d[teacher, seed] = method - baseline, one row per teacher, one column per seed
    (only the seeds every teacher has). Teacher and seed are crossed random effects: the gain of teacher t on
    seed s is delta + a_t + c_s + e_ts, and seed noise common to all teachers (c_s: the shared baseline and
    initialisation) does not average out over teachers. With the two-way mean squares MS_T (teachers, k - 1
    df), MS_S (seeds, n - 1 df) and MS_E (residual), Var(grand mean) = (MS_T + MS_S - MS_E) / (k n), a
    component estimated below 0 taken as 0; the interval is t-based with Satterthwaite's degrees of freedom.
    Its coverage is checked by simulation in tests/test_coverage.py (at least 95 %; conservative at k = n = 3,
    about 97 % with the measured components). `sd` is the SE times sqrt(k) (power over
    teachers) and `n` is k. None without two teachers and two common seeds."""
    d = d.dropna(axis=1, how="any").dropna(axis=0, how="all")
    k, n = d.shape
    if k < 2 or n < 2:
        return None
    grand, lo, hi, p, se, df = (float(v) for v in crossed_interval(d.to_numpy(dtype=float)))
    if not se > 1e-12 * max(1.0, abs(grand)):  # no spread to speak of (or a negative estimate): no interval
        return Paired(grand, grand, grand, k)
    return Paired(grand, lo, hi, k, p, sd=se * math.sqrt(k), df=df)


def crossed_interval(x):
    """crossed_difference's interval for gains x [..., k, n] (vectorised over leading axes): mean, low, high,
    p, SE, Satterthwaite degrees of freedom (SE 0 where the variance estimate is not positive)."""
    import numpy as np
    from scipy import stats

    x = np.asarray(x, dtype=float)
    k, n = x.shape[-2:]
    grand, rows, cols = x.mean((-2, -1)), x.mean(-1), x.mean(-2)
    ms_t = n * ((rows - grand[..., None]) ** 2).sum(-1) / (k - 1)
    ms_s = k * ((cols - grand[..., None]) ** 2).sum(-1) / (n - 1)
    resid = x - rows[..., :, None] - cols[..., None, :] + grand[..., None, None]
    ms_e = (resid**2).sum((-2, -1)) / ((k - 1) * (n - 1))
    # Var(grand mean) k n = max(MS_T - MS_E, 0) + max(MS_S - MS_E, 0) + MS_E: a negative variance component is
    # taken as 0 (otherwise the difference of mean squares leaves Satterthwaite's df near 0 and a useless interval)
    c_t, c_s = (ms_t > ms_e).astype(float), (ms_s > ms_e).astype(float)
    c_e = 1.0 - c_t - c_s
    comb = c_t * ms_t + c_s * ms_s + c_e * ms_e
    with np.errstate(divide="ignore", invalid="ignore"):
        df = comb**2 / ((c_t * ms_t) ** 2 / (k - 1) + (c_s * ms_s) ** 2 / (n - 1) + (c_e * ms_e) ** 2 / ((k - 1) * (n - 1)))
        se = np.sqrt(np.clip(comb, 0, None) / (k * n))
        half = stats.t.ppf(0.975, df) * se
        p = 2 * stats.t.sf(np.abs(grand) / se, df)
    return grand, grand - half, grand + half, p, se, df


# Power of the two-sided paired t-test (one sample of n differences, SD sd): under an effect delta the
# statistic follows a noncentral t with n - 1 degrees of freedom and noncentrality delta * sqrt(n) / sd.
POWER = 0.8


def paired_power(delta: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """The probability that a two-sided paired t-test at level alpha rejects under a true mean difference delta."""
    from scipy import stats

    if n < 2 or not sd > 0:
        return math.nan
    df, nc = n - 1, abs(delta) * math.sqrt(n) / sd
    crit = stats.t.ppf(1 - alpha / 2, df)
    power = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    return power if math.isfinite(power) else _power_by_integration(nc, df, crit)


def _power_by_integration(nc: float, df: int, crit: float) -> float:
    """The same probability from the noncentral t's definition, T = (Z + nc) / sqrt(V / df) with V ~ chi2(df),
    integrated over V's quantiles: scipy's nct returns nan for one tail or the other at small df and strict
    alpha (Holm's α/m), and a nan there must not turn into a power of 0 or 1."""
    from scipy import integrate, stats

    def rejects(u: float) -> float:
        s = crit * math.sqrt(stats.chi2.ppf(u, df) / df)
        return float(stats.norm.sf(s - nc) + stats.norm.cdf(-s - nc))

    return float(integrate.quad(rejects, 0.0, 1.0, epsabs=1e-12, epsrel=1e-10, limit=200)[0])


def mde(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The minimum detectable paired effect: the smallest |delta| the test finds with the given power (nan
    without an SD or with n < 2)."""
    from scipy import optimize

    if n < 2 or not sd > 0:
        return math.nan
    hi = sd
    while paired_power(hi, sd, n, alpha) < power:
        hi *= 2
    return float(optimize.brentq(lambda d: paired_power(d, sd, n, alpha) - power, 0.0, hi, xtol=1e-10 * sd))


def seeds_needed(delta: float, sd: float, alpha: float = ALPHA, power: float = POWER, limit: int = 10000) -> float:
    """The fewest seeds (paired differences) for which the test finds delta with the given power (nan
    without an SD or an effect; inf beyond `limit`)."""
    if not sd > 0 or not abs(delta) > 0:
        return math.nan
    n = 2
    while paired_power(delta, sd, n, alpha) < power:
        n += 1
        if n > limit:
            return math.inf
    return n


def pooled_sd(comparisons: Sequence["Paired | None"]) -> tuple[float, int]:
    """The root mean square of the comparisons' paired SDs and the smallest n among them (a table's
    typical spread of a difference; nan, 0 without one)."""
    sds = [(c.sd, c.n) for c in comparisons if c is not None and c.n >= 2 and c.sd > 0]
    if not sds:
        return math.nan, 0
    return math.sqrt(sum(s * s for s, _ in sds) / len(sds)), min(n for _, n in sds)


def power_line(comparisons: list["Paired | None"], family: int, effect: float = 1.0) -> str:
    """One sentence: what the table could detect (80% power) at alpha and at Holm's strictest step
    alpha/m, and the seeds a paired effect of `effect` points would need at alpha. Comparisons with different
    numbers of seeds are given per n (one pooled n would let a method run on 2 seeds set the whole table's line:
    a minimum detectable effect of 550 points); one beyond a 0-100 scale says that nothing could be detected."""
    valid = [c for c in comparisons if c is not None and c.n >= 2 and c.sd > 0]
    ns = sorted({c.n for c in valid}, reverse=True)
    if not ns:
        return "Power: not computable (fewer than two paired seeds, or no spread)."
    groups = [(n, [c for c in valid if c.n == n]) for n in ns]
    sd0 = pooled_sd(groups[0][1])[0]
    k = seeds_needed(effect, sd0)
    need = f"a {effect:g}-point effect would need {f'{k:.0f}' if k < math.inf else 'over 10,000'} seeds at α = {ALPHA}"
    if len(ns) == 1:
        n, sd = ns[0], sd0
        head = (
            f"Power: with n = {n} seeds and a paired SD of {sd:.2f} points (root mean square over the table's "
            f"comparisons), the minimum detectable paired effect at 80% power is "
        )
        if mde(sd, n) > 100:
            return head + f"over 100 points: too few seeds to detect any effect on a 0-100 scale; {need}."
        strict = (
            f"; at Holm's strictest step (α/{family} = {ALPHA / family:.3g}) {mde(sd, n, ALPHA / family):.2f}"
            if family > 1
            else ""
        )
        return head + f"{mde(sd, n):.2f} points at α = {ALPHA}{strict}; {need}."
    parts = []
    for n, group in groups:
        sd = pooled_sd(group)[0]
        size = f"n = {n} ({len(group)} comparison{'s' if len(group) > 1 else ''}, paired SD {sd:.2f})"
        if mde(sd, n) > 100:
            parts.append(f"{size}: over 100 points, too few seeds to detect any effect")
        else:
            parts.append(
                f"{size}: {mde(sd, n):.2f} points at α = {ALPHA}"
                + (f", {mde(sd, n, ALPHA / family):.2f} at α/{family}" if family > 1 else "")
            )
    return (
        f"Power, per number of seeds (the comparisons have different n): the minimum detectable paired effect "
        f"at 80% power with {'; with '.join(parts)}; {need} (at the n = {ns[0]} comparisons' SD)."
    )
