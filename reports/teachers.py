"""Teacher instances: is a gain a property of the teacher's recipe, or of the one teacher it trained?

Every other table varies the student's seed with one trained teacher held fixed, so its CI is a CI for that
teacher. Where a store holds one setting with several teacher instances (runs that differ only in
`teacher_seed`, and so in `teacher_id`), this table shows per method configuration its gain against each
instance's own baseline (paired over seeds) and, across the instances, the mean of the per-teacher mean gains
with a 95% CI over teachers and student seeds as crossed random effects (the teachers share the student's
seeds and the baseline, so seed noise does not average out over teachers: benchmark.stats.crossed_difference;
Holm over the table's methods): the test of a claim about the recipe. Beside it, the spread between teachers (SD of the
per-teacher gains) and within one
(the root mean square of the paired SDs over seeds)."""

from __future__ import annotations

import math

import pandas as pd

from benchmark.registry import BASELINE
from benchmark.stats import comparison_record, crossed_difference, holm, paired_difference, per_seed, pooled_sd
from reports.grouping import baseline_of, configurations, reported_metrics, task_pools
from reports.markdown import Footnotes, table

INSTANCE = "params.teacher_seed"
INSTANCE_COLUMNS = {INSTANCE, "params.teacher_id"}


def teacher_instance_tables(runs: pd.DataFrame, notes: Footnotes) -> tuple[str, list[dict]]:
    """(Markdown, records) for every task and setting run with two or more teacher instances; '' when none.
    `runs` are runs with their real teacher (the controls have their own section)."""
    if runs.empty or INSTANCE not in runs:
        return "", []
    parts, records = [], []
    for task_name, task, pool, labels in task_pools(runs, INSTANCE_COLUMNS):
        for setting in pool["_setting"].unique():
            sel = pool[pool["_setting"] == setting]
            if sel[INSTANCE].dropna().nunique() >= 2:
                md, recs = _teacher_section(task_name, task, sel, labels[setting], notes, pool)
                parts.append(md), records.extend(recs)
    return "\n".join(parts), records


def _instances(sel: pd.DataFrame) -> list[str]:
    seeds = sel[INSTANCE].dropna().astype(str).unique()
    return sorted(seeds, key=lambda s: (float(s), s) if s.lstrip("-").replace(".", "", 1).isdigit() else (math.inf, s))


def _teacher_section(task_name, task, sel: pd.DataFrame, label: str, notes: Footnotes, context: pd.DataFrame):
    heading = f"### {task_name}: {label}"
    metrics = reported_metrics(task, sel)
    if not metrics:
        return f"{heading}\n\nRuns of several teacher instances without a summary metric.\n", []
    metric, metric_label = metrics[0]
    col = f"metrics.{metric}"
    instances = _instances(sel)
    baselines = {i: baseline_of(sel[sel[INSTANCE].astype(str) == i]) for i in instances}
    with_base = [i for i in instances if not baselines[i].empty]
    rows = []
    for row_label, method, g in configurations(sel, INSTANCE_COLUMNS, context):
        if method == BASELINE:
            continue
        gains, per_seed_gains = {}, {}
        for i in with_base:
            mine = g[g[INSTANCE].astype(str) == i]
            b = baselines[i]
            m_s, b_s = per_seed(mine[col], mine["params.seed"]), per_seed(b[col], b["params.seed"])
            gains[i] = paired_difference(m_s, b_s)
            if gains[i] is not None:
                per_seed_gains[i] = (m_s - b_s).dropna()
        if len(per_seed_gains) < 2:  # one teacher's gain is the leaderboard's
            continue
        rows.append((row_label, method, g, gains, crossed_difference(pd.DataFrame(per_seed_gains).T)))
    if not rows:
        return (
            f"{heading}\n\nRuns of {len(instances)} teacher instances (`teacher_seed` {', '.join(instances)}), but no "
            "method has a gain (runs and a baseline) with two of them.\n",
            [],
        )
    holm([r[4] for r in rows])  # every comparison here is exploratory (a protocol's runs have one teacher)
    body, records = [], []
    for i, (row_label, method, g, gains, across) in enumerate(rows):
        ref = notes.add(list(g.drop_duplicates([INSTANCE, "params.seed"], keep="last")["run_id"]))
        within, _ = pooled_sd(list(gains.values()))
        means = pd.Series([x.mean for x in gains.values() if x is not None])
        between = float(means.std(ddof=1)) if len(means) > 1 else math.nan
        cell = str(across) if across is not None else "no seed common to two teachers"
        body.append(
            [row_label + ref]
            + [str(gains[t]).removesuffix(" *") if gains.get(t) else "—" for t in with_base]
            + [cell, _sd(between), _sd(within)]
        )
        rec = {
            "task": task_name,
            "setting": label,
            "configuration": row_label,
            "primary_metric": metric,
            "teachers": len(means),
            "sd_between_teachers": between,
            "sd_within_teacher": within,
        }
        rec.update(
            {
                k.replace("delta", "gain_over_teachers") if k.startswith("delta") else k: v
                for k, v in comparison_record(across).items()
            }
        )
        for t in with_base:
            rec.update(
                {
                    k.replace("delta", f"gain_teacher_seed_{t}"): v
                    for k, v in comparison_record(gains.get(t)).items()
                    if k.startswith("delta")
                }
            )
        records.append(rec)
    header = (
        ["method"]
        + [f"teacher_seed={i}{_accuracy(sel, i)}: Δ {metric_label} vs its baseline" for i in with_base]
        + [
            "across teachers: mean Δ, 95% CI (teachers and seeds crossed), p_Holm",
            "SD between teachers' mean Δ",
            "SD within a teacher (over seeds)",
        ]
    )
    testable = [i for i, r in enumerate(rows) if r[4] is not None and r[4].n >= 2 and not r[4].no_spread]
    tests = f"Holm over the {len(rows)} method{'s' if len(rows) != 1 else ''} of this table"
    missing = [i for i in instances if i not in with_base]
    lines = [
        heading,
        "",
        f"{len(instances)} teacher instances of one recipe (`teacher_seed` {', '.join(instances)}), each with its own "
        "baseline runs" + (f" except {', '.join(missing)} (left out: no baseline)" if missing else "") + ". Δ in "
        "percentage points, paired over student seeds within a teacher; the across-teacher CI treats teacher "
        "and student seed as crossed random effects (the teachers share the seeds and the baseline, so a "
        f"seed's noise is common to every teacher's gain; {tests}). The two SD columns are not comparable "
        "scales: one is of 3-seed means, the other of single seeds. A gain "
        "whose across-teacher CI excludes 0 is a property of the recipe; one resolved for every single teacher "
        "but not across them holds for those teachers only. Methods run with one teacher only are left out "
        "(their gains are in the leaderboards).",
        "",
        table(header, body),
        "",
        _power([rows[i][4] for i in testable]),
        "",
    ]
    return "\n".join(lines), records


def _accuracy(sel: pd.DataFrame, instance: str) -> str:
    acc = (
        pd.to_numeric(sel.loc[sel[INSTANCE].astype(str) == instance, "params.teacher_test_acc"], errors="coerce")
        if "params.teacher_test_acc" in sel
        else pd.Series(dtype=float)
    )
    return f" (teacher {acc.dropna().iloc[0]:.2f}%)" if acc.notna().any() else ""


def _sd(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.2f}"


def _power(tested: list) -> str:
    """The smallest across-teacher effect found with 80% power, from each comparison's crossed SE and degrees
    of freedom (t quantiles; root mean square over the table's methods)."""
    if not tested:
        return "Power over teachers: not computable (fewer than two teachers and two common seeds, or no spread)."
    from scipy import stats

    sizes = [(stats.t.ppf(0.975, c.df) + stats.t.ppf(0.8, c.df)) * c.sd / math.sqrt(c.n) for c in tested]
    return (
        f"Power over teachers: with k = {max(c.n for c in tested)} teachers crossed with the student seeds, the "
        f"smallest across-teacher effect found with about 80% power at α = 0.05 is "
        f"{math.sqrt(sum(x * x for x in sizes) / len(sizes)):.2f} points (root mean square over the table's methods)."
    )


def teacher_summary(records: list[dict]) -> str:
    """The report's summary line per teacher-instance table: how many of its methods survive Holm across
    teachers, and the best of them."""
    lines = []
    for task, setting in dict.fromkeys((r["task"], r["setting"]) for r in records):
        rs = [r for r in records if r["task"] == task and r["setting"] == setting and not math.isnan(r["p"])]
        if not rs:
            continue
        head = f"**Across {max(r['teachers'] for r in rs)} teacher instances** ({task}: {setting}, teachers and seeds crossed)"
        survive = sum(r["p_holm"] < 0.05 for r in rs)
        best = max(rs, key=lambda r: r["gain_over_teachers"])
        lines.append(
            f"{head}: {survive} of {len(rs)} method{'s' if len(rs) != 1 else ''} survive{'s' if survive == 1 else ''} "
            f"Holm across teachers; the largest gain is {best['configuration']}, Δ {best['gain_over_teachers']:+.2f} "
            f"[{best['gain_over_teachers_ci_low']:+.2f}, {best['gain_over_teachers_ci_high']:+.2f}], p_Holm = "
            f"{best['p_holm']:.2g}."
        )
    return "\n\n".join(lines) + ("\n" if lines else "")
