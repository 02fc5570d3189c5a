"""Negative controls: is a method's gain knowledge of the teacher, or regularisation any teacher would give?

Runs made with `teacher_control=random` (the teacher's architecture untrained), `teacher_control=shuffled`
(each training sample given another sample's teacher outputs) or `teacher_control=class_mean` (each sample
given its class's mean teacher outputs: label-level knowledge only) or `teacher_control=label_smoothing` (no
teacher: a smoothed one-hot target of the teacher's mean target entropy) are kept out of the leaderboards and shown
here, beside the same method with the real teacher in the same setting otherwise. Per method and control:
the gain with the real teacher and with the control (each a paired difference against the real setting's
baseline, which reads no teacher), and their difference, the *transfer* (real - control, paired over
seeds), with its 95% CI and a Holm-adjusted p over the table's transfers (one family). Against class_mean the
control gain is the label-level part of a gain and the transfer its per-sample part: only a resolved
per-sample part is knowledge of the individual samples that a teacher of class names could not give."""

from __future__ import annotations

import pandas as pd

from benchmark.registry import BASELINE
from benchmark.stats import comparison_record, holm, paired_difference, per_seed, power_line
from reports.grouping import baseline_of, configurations, reported_metrics, task_pools
from reports.leaderboard import teacher_line
from reports.markdown import Footnotes, table

CONTROL = "params.teacher_control"
# columns that differ between a run with its real teacher and the same run with a control teacher
CONTROL_COLUMNS = {CONTROL, "params.teacher_id"}


def split_controls(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs with their real teacher, runs with a control teacher)."""
    if runs.empty or CONTROL not in runs:
        return runs, runs.iloc[0:0]
    ctrl = runs[CONTROL].fillna("none") != "none"
    return runs[~ctrl], runs[ctrl]


def control_tables(runs: pd.DataFrame, notes: Footnotes) -> tuple[str, list[dict]]:
    """(Markdown, records) for every task and setting with control runs; '' when there are none."""
    _, ctrl = split_controls(runs)
    if ctrl.empty:
        return "", []
    parts, records = [], []
    for task_name, task, pool, labels in task_pools(runs, CONTROL_COLUMNS, tasks=ctrl["params.task"].unique()):
        for setting in pool.loc[pool[CONTROL] != "none", "_setting"].unique():
            md, recs = _control_section(task_name, task, pool[pool["_setting"] == setting], labels[setting], notes, pool)
            parts.append(md), records.extend(recs)
    return "\n".join(parts), records


def _control_section(task_name, task, sel: pd.DataFrame, label: str, notes: Footnotes, context: pd.DataFrame):
    heading = f"### {task_name}: {label}"
    metrics = reported_metrics(task, sel)
    real = sel[sel[CONTROL] == "none"]
    base = baseline_of(real)
    if not metrics or base.empty:
        why = "no summary metric" if not metrics else "no baseline run with the real teacher in this setting"
        return f"{heading}\n\nControl runs without a comparison: {why}.\n", []
    metric, metric_label = metrics[0]
    col = f"metrics.{metric}"
    b = per_seed(base[col], base["params.seed"])
    rows = []
    for control in sorted(c for c in sel[CONTROL].unique() if c != "none"):
        for row_label, method, g in configurations(sel[sel[CONTROL] == control], CONTROL_COLUMNS, context):
            if method == BASELINE:
                continue
            mine = real[(real["params.method"] == method) & (real["_variant"] == g["_variant"].iloc[0])]
            r_seed, c_seed = per_seed(mine[col], mine["params.seed"]), per_seed(g[col], g["params.seed"])
            rows.append(
                (
                    row_label,
                    control,
                    mine,
                    g,
                    paired_difference(r_seed, b),
                    paired_difference(c_seed, b),
                    paired_difference(r_seed, c_seed),
                )
            )
    transfers = [r[6] for r in rows]
    holm(transfers)
    body, records = [], []
    for row_label, control, mine, g, gain, cgain, transfer in rows:
        ref = notes.add(
            list(mine.drop_duplicates("params.seed", keep="last")["run_id"])
            + list(g.drop_duplicates("params.seed", keep="last")["run_id"])
        )
        body.append(
            [
                row_label + ref,
                control,
                _unstarred(gain) if gain else "no real-teacher run",
                _unstarred(cgain) if cgain else "—",
                str(transfer) if transfer else "no matched seeds",
            ]
        )
        rec = {"task": task_name, "setting": label, "configuration": row_label, "control": control, "primary_metric": metric}
        for name, comp in (("gain", gain), ("control_gain", cgain), ("transfer", transfer)):
            rec.update(
                {
                    k.replace("delta", name) if k.startswith("delta") else f"{name}_{k}": v
                    for k, v in comparison_record(comp).items()
                }
            )
        records.append(rec)
    teachers = [teacher_line(sel[sel[CONTROL] == c], f"teacher_control={c}") for c in sorted(sel[CONTROL].unique())]
    header = [
        "method",
        "control",
        f"gain, real teacher: Δ {metric_label} vs baseline",
        "gain, control teacher: Δ vs baseline",
        "transfer = real − control, 95% CI, p_Holm",
    ]
    lines = [
        heading,
        "",
        *[t + "  " for t in teachers],
        "",
        f"Δ and transfer in percentage points, paired over seeds; the baseline is the real setting's (it reads "
        f"no teacher). Holm over the {sum(t is not None and t.n >= 2 and not t.no_spread for t in transfers)} "
        "transfers of this table. A gain that the random or shuffled control gives as well is regularisation, "
        "not knowledge of the teacher: only a transfer above 0 says the real teacher taught something."
        + (
            " Against class_mean (every sample given its class's mean teacher outputs) the control gain is the "
            "label-level part of the gain and the transfer its per-sample part."
            if "class_mean" in set(sel[CONTROL])
            else ""
        ),
        "",
        table(header, body),
        "",
        *decomposition(rows),
        power_line(transfers, max(1, len(transfers))),
        "",
    ]
    return "\n".join(lines), records


def decomposition(rows) -> list[str]:
    """Against class_mean: the methods whose per-sample part (real - class_mean) survives Holm, and those whose
    gain is not shown to be more than label-level knowledge."""
    mine = [(label, t) for label, control, _, _, _, _, t in rows if control == "class_mean"]
    if not mine:
        return []
    resolved = [f"{label} {t.mean:+.2f}" for label, t in mine if t is not None and t.significant and t.mean > 0]
    other = [label for label, t in mine if not (t is not None and t.significant and t.mean > 0)]
    return [
        f"**Per-sample knowledge** (the transfer against class_mean, above 0 after Holm): "
        f"{', '.join(resolved) if resolved else 'none'}"
        + (
            f"; not shown for {', '.join(other)} (their gain is not shown to be more than what the class means give)"
            if other
            else ""
        )
        + ".",
        "",
    ]


def _unstarred(p) -> str:
    """A gain as a raw interval: the gains are not a tested family here (the transfers are), so no star."""
    return str(p).removesuffix(" *")
