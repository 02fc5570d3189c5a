"""Teacher instances: is a gain a property of the teacher's recipe, or of the one teacher it trained?

Every other table varies the student's seed with one trained teacher held fixed, so its CI is a CI for that
teacher. Where a store holds one setting with several teacher instances (runs that differ only in
`teacher_seed`, and so in `teacher_id`), this table shows per method configuration its gain against each
instance's own baseline (paired over seeds) and, across the instances, the mean of the per-teacher mean gains
with a t-based 95% CI over teachers (k - 1 degrees of freedom; the task's pre-registered primary comparison
tested alone, Holm over the table's other methods): the test of a
claim about the recipe. Beside it, the spread between teachers (SD of the per-teacher gains) and within one
(the root mean square of the paired SDs over seeds)."""
from __future__ import annotations

import math

import pandas as pd

from benchmark.stats import comparison_record, holm, mde, paired_difference, per_seed, pooled_sd
from reports.grouping import baseline_of, configurations, task_pools
from reports.leaderboard import BASELINE, _metrics, primary_row
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
                md, recs = _one(task_name, task, sel, labels[setting], notes, pool)
                parts.append(md), records.extend(recs)
    return "\n".join(parts), records


def _instances(sel: pd.DataFrame) -> list[str]:
    seeds = sel[INSTANCE].dropna().astype(str).unique()
    return sorted(seeds, key=lambda s: (float(s), s) if s.lstrip("-").replace(".", "", 1).isdigit() else (math.inf, s))


def _one(task_name, task, sel: pd.DataFrame, label: str, notes: Footnotes, context: pd.DataFrame):
    heading = f"### {task_name}: {label}"
    metrics = _metrics(task, sel)
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
        gains = {}
        for i in with_base:
            mine = g[g[INSTANCE].astype(str) == i]
            b = baselines[i]
            gains[i] = paired_difference(per_seed(mine[col], mine["params.seed"]), per_seed(b[col], b["params.seed"]))
        means = pd.Series({i: p.mean for i, p in gains.items() if p is not None})
        if len(means) < 2:  # one teacher's gain is the leaderboard's
            continue
        rows.append((row_label, method, g, gains, paired_difference(means, pd.Series(0.0, index=means.index))))
    if not rows:
        return (f"{heading}\n\nRuns of {len(instances)} teacher instances (`teacher_seed` {', '.join(instances)}), but no "
                "method has a gain (runs and a baseline) with two of them.\n", [])
    prim = primary_row(task, [(r[0], r[1], r[2], None, r[4]) for r in rows])
    holm([r[4] for i, r in enumerate(rows) if i != prim])  # the pre-registered primary comparison is tested alone
    body, records = [], []
    for i, (row_label, method, g, gains, across) in enumerate(rows):
        row_label += " — primary (pre-registered)" if i == prim else ""
        ref = notes.add(list(g.drop_duplicates([INSTANCE, "params.seed"], keep="last")["run_id"]))
        within, _ = pooled_sd(list(gains.values()))
        between = across.sd
        cell = str(across)
        if i == prim and not math.isnan(across.p):  # tested alone: its raw p, before the star
            cell = cell.removesuffix(" *") + f" p={across.p:.2g}" + (" *" if across.significant else "")
        body.append([row_label + ref] + [str(gains[t]).removesuffix(" *") if gains.get(t) else "—" for t in with_base]
                    + [cell, _sd(between), _sd(within)])
        rec = {"task": task_name, "setting": label, "configuration": row_label, "primary_metric": metric,
               "primary_comparison": i == prim,
               "teachers": across.n, "sd_between_teachers": between,
               "sd_within_teacher": within}
        rec.update({k.replace("delta", "gain_over_teachers") if k.startswith("delta") else k: v
                    for k, v in comparison_record(across).items()})
        for t in with_base:
            rec.update({k.replace("delta", f"gain_teacher_seed_{t}"): v
                        for k, v in comparison_record(gains.get(t)).items() if k.startswith("delta")})
        records.append(rec)
    header = (["method"] + [f"teacher_seed={i}{_accuracy(sel, i)}: Δ {metric_label} vs its baseline" for i in with_base]
              + ["across teachers: mean Δ, 95% CI over teachers, p_Holm (the primary: p)", "SD between teachers", "SD within a teacher"])
    testable = [i for i, r in enumerate(rows) if r[4] is not None and r[4].n >= 2 and not r[4].no_spread]
    family = sum(i != prim for i in testable)
    alone = " besides the pre-registered primary comparison, tested alone at 0.05" if prim in testable else ""
    tests = (f"Holm over the {family} {'other ' if alone else ''}method{'s' if family != 1 else ''} of this table{alone}"
             if family else "the pre-registered primary comparison, tested alone at 0.05")
    missing = [i for i in instances if i not in with_base]
    lines = [heading, "",
             f"{len(instances)} teacher instances of one recipe (`teacher_seed` {', '.join(instances)}), each with its own "
             "baseline runs" + (f" except {', '.join(missing)} (left out: no baseline)" if missing else "") + ". Δ in "
             "percentage points, paired over student seeds within a teacher; the across-teacher CI treats each "
             f"teacher's mean gain as one observation ({tests}). A gain "
             "whose across-teacher CI excludes 0 is a property of the recipe; one resolved for every single teacher "
             "but not across them holds for those teachers only. Methods run with one teacher only are left out "
             "(their gains are in the leaderboards).", "",
             table(header, body), "", _power([rows[i][4] for i in testable]), ""]
    return "\n".join(lines), records


def _accuracy(sel: pd.DataFrame, instance: str) -> str:
    acc = pd.to_numeric(sel.loc[sel[INSTANCE].astype(str) == instance, "params.teacher_test_acc"], errors="coerce") \
        if "params.teacher_test_acc" in sel else pd.Series(dtype=float)
    return f" (teacher {acc.dropna().iloc[0]:.2f}%)" if acc.notna().any() else ""


def _sd(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.2f}"


def _power(tested: list) -> str:
    sd, n = pooled_sd(tested)
    if n < 2:
        return "Power over teachers: not computable (fewer than two teachers with a gain, or no spread)."
    return (f"Power over teachers: with k = {n} teachers and an SD of {sd:.2f} points between their mean gains (root "
            f"mean square over the table's methods), the smallest across-teacher effect found with 80% power at "
            f"α = 0.05 is {mde(sd, n):.2f} points.")


def teacher_summary(records: list[dict]) -> str:
    """The report's summary line per teacher-instance table: its primary comparison across teachers (tested
    alone), or how many of its methods survive Holm across teachers."""
    lines = []
    for (task, setting) in dict.fromkeys((r["task"], r["setting"]) for r in records):
        rs = [r for r in records if r["task"] == task and r["setting"] == setting]
        head = f"**Across {max(r['teachers'] for r in rs)} teacher instances** ({task}: {setting}, one observation per teacher)"
        prim = next((r for r in rs if r["primary_comparison"]), None)
        if prim is not None:
            g = prim["gain_over_teachers"]
            verdict = "not testable" if math.isnan(prim["p"]) else f"p = {prim['p']:.2g}, tested alone at α = 0.05: " + (
                ("**resolved: " + ("better" if g > 0 else "worse") + " than the baseline**") if prim["p"] < 0.05
                else "not resolved")
            lines.append(f"{head}: {prim['configuration'].removesuffix(' — primary (pre-registered)')} vs baseline "
                         f"(primary, pre-registered), Δ {g:+.2f} [{prim['gain_over_teachers_ci_low']:+.2f}, "
                         f"{prim['gain_over_teachers_ci_high']:+.2f}], {verdict}; SD between teachers "
                         f"{prim['sd_between_teachers']:.2f}, within one {prim['sd_within_teacher']:.2f}.")
        rest = [r for r in rs if not r["primary_comparison"] and not math.isnan(r["p"])]
        if rest:
            survive = sum(r["p_holm"] < 0.05 for r in rest)
            lines.append(f"{head}: {survive} of {len(rest)} exploratory method{'s' if len(rest) != 1 else ''} "
                         f"survive{'s' if survive == 1 else ''} Holm across teachers.")
    return "\n\n".join(lines) + ("\n" if lines else "")
