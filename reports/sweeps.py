"""The controlled tasks' sweeps (synthetic: gamma, beta; mfh: their gamma): per swept value, each method
configuration's paired gain over the baseline (test top-1, matched seeds: the same seed is the same data
draw and teacher for every method), the baseline's and the teacher's own accuracy, and how the gain changes
with the swept value (slope); a table and a figure per swept field and setting."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.registry import BASELINE
from benchmark.stats import Paired, describe, holm, paired_difference, per_seed
from reports import figures
from reports.grouping import differing, label_of, setting_columns, variant_columns
from reports.grouping import key_of as _key
from reports.runs import task_info

FOCUS = {"kd", "fitnet", "ours_feature", "ours_classifier", "ours_feature_quality"}
# (task, swept param, its name, what it means, other params that move with it and so do not split settings)
SWEEPS = [
    ("synthetic", "synth_gamma", "gamma", "share of the teacher's decisive factors the student also sees", ()),
    ("synthetic", "synth_beta", "beta", "student-only decisive factors, as a share of the teacher's", ()),
    (
        "mfh",
        "mfh_gamma",
        "gamma",
        "MFH's shared share: shared / (shared + both modalities' specific decisive features)",
        ("mfh_dim",),
    ),
]
TASK_TITLES = {"synthetic": "Synthetic task", "mfh": "MFH task"}


def slope_cell(sel: pd.DataFrame, method: pd.DataFrame, metric: str) -> Paired | None:
    """How the gain changes with the swept value: each seed's least-squares slope of its gains (method −
    baseline, same seed and value) against the value, then mean over seeds with a t-based 95% CI (seeds
    are the independent units: one seed is one data draw and one teacher across the whole sweep)."""
    from scipy import stats

    gains: dict[str, list] = {}
    for x, at in sel.groupby("_x"):
        b = at[at["params.method"] == BASELINE]
        g = at[at.index.isin(method.index)]
        for seed, v in (per_seed(g[metric], g["params.seed"]) - per_seed(b[metric], b["params.seed"])).dropna().items():
            gains.setdefault(seed, []).append((x, v))
    slopes = pd.Series([stats.linregress(*zip(*pts)).slope for pts in gains.values() if len({x for x, _ in pts}) > 1])
    if slopes.empty:
        return None
    return paired_difference(slopes, pd.Series(0.0, index=slopes.index))


def synthetic_sweeps(runs: pd.DataFrame, out: Path) -> tuple[str, list[tuple[str, Path]]]:
    """The controlled tasks' sweeps (synthetic: gamma, beta; mfh: their gamma): per swept value, each method's
    paired gain over the baseline (test top-1, matched seeds: the same seed is the same data draw and teacher
    for every method), the baseline's and the teacher's own accuracy; a table and a figure per swept field
    and setting (every setting in which the field takes two values or more)."""
    parts, figs = [], []
    for task_name, field, name, meaning, moving in SWEEPS:
        task = task_info(task_name)
        if runs.empty or task is None:
            continue
        metric = f"metrics.{task.summary_metrics[0][0]}"
        pool = runs[(runs["params.task"] == task_name) & (runs["tags.xkd.study"] == "")]
        col = f"params.{field}"
        if pool.empty or col not in pool or metric not in pool:
            continue
        skip = {col, *(f"params.{m}" for m in moving)}
        every = pool.assign(_setting=_key(pool, setting_columns(pool, skip)), _variant=_key(pool, variant_columns(pool, set())))
        swept = every.groupby("_setting")[col].nunique()
        order = every[every["_setting"].isin(swept[swept >= 2].index)]["_setting"].value_counts().index
        for n_fig, setting in enumerate(order):
            sel = every[every["_setting"] == setting]
            sel = sel.assign(_x=pd.to_numeric(sel[col]))
            xs = sorted(sel["_x"].unique())
            fixed = [c for c in differing(pool, setting_columns(pool, skip)) if c in sel]
            held = ", ".join(f"{c.removeprefix('params.')}={sel[c].iloc[0]}" for c in fixed) or "profile values"
            sweep = Sweep(task, task_name, name, meaning, held, sel, xs, metric)
            g = _gains(sweep)
            parts.append(_sweep_table(sweep, g))
            figs.append(_sweep_figure(sweep, g, out, f"{task_name}_{name}{'' if n_fig == 0 else f'_{n_fig + 1}'}.png"))
    return "\n".join(parts), figs


@dataclass
class Sweep:
    """One swept field in one setting: its runs (`_x` the swept value) and how the table names them."""

    task: Any
    task_name: str
    name: str  # the field's name in the paper (gamma, beta)
    meaning: str
    held: str  # the values held fixed, as text
    sel: pd.DataFrame
    xs: list[float]
    metric: str


@dataclass
class Gains:
    """Per method configuration, its paired gain at each swept value and its slope; the baseline's and the
    teacher's own accuracy at each value."""

    methods: list[str]
    gains: dict[str, list]
    slopes: dict[str, Paired | None]
    teacher: list[pd.Series]
    base_acc: list[pd.Series]


def _gains(sw: Sweep) -> Gains:
    sel, metric = sw.sel, sw.metric
    # one row per method configuration (two settings of one method are two rows, never one mean)
    rows: dict[str, pd.DataFrame] = {}
    for m in sorted(sel["params.method"].unique()):
        if m == BASELINE:
            continue
        mine = sel[sel["params.method"] == m]
        named = differing(mine.drop_duplicates("_variant"), variant_columns(mine, set()))
        for _, v in mine.drop_duplicates("_variant").iterrows():
            label = m + (f" ({label_of(v, named)})" if named else "")
            rows[label] = mine[mine["_variant"] == v["_variant"]]
    methods = list(rows)
    gains: dict[str, list] = {m: [] for m in methods}
    teacher, base_acc = [], []
    for x in sw.xs:
        at = sel[sel["_x"] == x]
        base = at[at["params.method"] == BASELINE]
        b = per_seed(base[metric], base["params.seed"])
        base_acc.append(b)
        teacher.append(
            per_seed(
                base["params.teacher_test_acc"] if "params.teacher_test_acc" in base else pd.Series(np.nan, index=base.index),
                base["params.seed"],
            )
        )
        for m in methods:
            g = at[at.index.isin(rows[m].index)]
            gains[m].append(paired_difference(per_seed(g[metric], g["params.seed"]), b) if not b.empty else None)
    slopes = {m: slope_cell(sel, rows[m], metric) for m in methods}
    holm([p for m in methods for p in gains[m]])
    holm(list(slopes.values()))
    return Gains(methods, gains, slopes, teacher, base_acc)


def _sweep_table(sw: Sweep, g: Gains) -> str:
    """One sweep's table (Markdown)."""
    name, xs, sel = sw.name, sw.xs, sw.sel
    head = f"| {name} = | " + " | ".join(f"{x:g}" for x in xs) + " | slope of Δ per unit, 95% CI |"
    lines = [
        f"### {TASK_TITLES.get(sw.task_name, sw.task_name)}: gain over the baseline against {name} ({sw.meaning})",
        "",
        f"Setting: {sel['params.profile'].iloc[0]} profile, student {sel['params.student'].iloc[0]}, {sw.held}; "
        f"{sw.task.summary_metrics[0][1]}. Cells: method − baseline over matched seeds (a seed is one draw of "
        "the data and one teacher), raw t-based 95% CI and the paired t-test's p-value adjusted with "
        "Holm's method across every cell of this table (one family); `*`: p_Holm < 0.05. Slope: each "
        f"seed's least-squares slope of its gains against {name} (points of gain per unit of {name}), mean "
        "over seeds with its 95% CI; the slope column is a family of its own.",
        "",
        head,
        "|---" * (len(xs) + 2) + "|",
        "| teacher (own test acc.) | " + " | ".join(describe(t) for t in g.teacher) + " | |",
        "| baseline (test top-1) | " + " | ".join(describe(b) for b in g.base_acc) + " | |",
    ]
    for m in g.methods:
        lines.append(f"| {m} | " + " | ".join(str(p) if p else "—" for p in g.gains[m]) + f" | {g.slopes[m] or '—'} |")
    return "\n".join(lines) + "\n"


def _sweep_figure(sw: Sweep, g: Gains, out: Path, fig_name: str) -> tuple[str, Path]:
    """One sweep's figure (title, path): the gains with their CIs, and the baseline's and teacher's accuracy."""
    name, xs, sel, methods = sw.name, sw.xs, sw.sel, g.methods
    fig, (ax, ax2) = figures.plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    st = figures.styles(methods)
    for i, m in enumerate(methods):
        pts = [(x, p) for x, p in zip(xs, g.gains[m]) if p]
        if not pts:
            continue
        mean = np.array([p.mean for _, p in pts])
        err = np.array([[p.mean - p.lo, p.hi - p.mean] if p.n > 1 else [0, 0] for _, p in pts]).T
        focus = m in FOCUS  # the paper's question: hard alignment (KD, FitNet) against its soft constraints
        ax.errorbar(
            [x + (i - len(methods) / 2) * 0.004 for x, _ in pts],
            mean,
            yerr=err,
            ms=4 if focus else 2,
            capsize=2,
            lw=2 if focus else 0.8,
            alpha=1.0 if focus else 0.35,
            label=m,
            **st[m],
        )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel(name), ax.set_ylabel("test top-1 gain over baseline (points, 95% CI)")
    ax.legend(fontsize=6, ncol=2)
    figures.title(
        fig,
        f"{sw.task_name}: gain against {name}; {sel['params.student'].iloc[0]}, "
        f"{sel['params.profile'].iloc[0]} profile, {sw.held} (bold: KD, FitNet, ours)",
    )
    for label, series, style in (("teacher (own modality)", g.teacher, "s--"), ("baseline student", g.base_acc, "o-")):
        ax2.errorbar(
            xs,
            [v.mean() for v in series],
            yerr=[v.std(ddof=1) if len(v) > 1 else 0 for v in series],
            fmt=style,
            capsize=3,
            label=label,
        )
    ax2.set_xlabel(name), ax2.set_ylabel("test top-1 (%)"), ax2.legend(fontsize=7), ax2.set_title("accuracy")
    title = TASK_TITLES.get(sw.task_name, sw.task_name)
    return f"{title}: gain over the baseline against {name} ({sw.held})", figures.save(fig, out / fig_name)
