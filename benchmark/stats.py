"""How numbers over seeds are summarised, in one place: mean ± sample std over distinct seeds, and the
paired difference against the baseline over matched seeds with a t-based 95% confidence interval."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd


def per_seed(values: pd.Series, seeds: pd.Series) -> pd.Series:
    """One value per distinct seed (the last run of a seed wins: reruns of a seed are not extra samples)."""
    s = pd.Series(pd.to_numeric(values, errors="coerce").values, index=seeds.astype(str).values).dropna()
    return s[~s.index.duplicated(keep="last")]


def describe(v: pd.Series) -> str:
    """'m ± s (n=k)' over distinct seeds; one seed has no spread: 'm ± n/a (n=1)'."""
    v = v.dropna().astype(float)
    if v.empty:
        return "n/a"
    if len(v) == 1:
        return f"{v.iloc[0]:.2f} ± n/a (n=1)"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f} (n={len(v)})"


@dataclass
class Paired:
    mean: float
    lo: float
    hi: float
    n: int

    @property
    def significant(self) -> bool:
        """The 95% interval excludes zero."""
        return self.n >= 2 and (self.lo > 0 or self.hi < 0)

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:+.2f} (n=1, no CI)"
        return f"{self.mean:+.2f} [{self.lo:+.2f}, {self.hi:+.2f}] (n={self.n}){' *' if self.significant else ''}"


def paired_difference(method: pd.Series, baseline: pd.Series) -> Paired | None:
    """method - baseline over the seeds both have (Series indexed by seed); None without a matched seed."""
    d = (method - baseline).dropna()
    if d.empty:
        return None
    if len(d) < 2:
        return Paired(float(d.iloc[0]), math.nan, math.nan, 1)
    from scipy import stats
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return Paired(float(d.mean()), float(d.mean() - half), float(d.mean() + half), len(d))
