"""Every Optuna study in the store (a `--grid` or TPE study of any method on any task, the paper's
`--paper` ablations included): the swept values, per value the validation objective and the test metric
with their 95% CI over seeds, the value that is best on validation and its test result; a table and a
figure each."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.stats import fmt_mean_std, per_seed, summary
from reports import figures
from reports.grouping import differing, setting_columns, setting_labels, variant_columns, with_keys
from reports.markdown import Footnotes, slug, table
from reports.runs import lower_is_better, task_info


def _ci(s: dict) -> str:
    if not s["n"]:
        return "n/a"
    if s["n"] < 2:
        return f"{s['mean']:.2f} (n=1, no CI)"
    return f"{s['mean']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}] (n={s['n']})"


def studies(runs: pd.DataFrame, out: Path, notes: Footnotes) -> tuple[str, list[dict], list[tuple[str, Path]]]:
    parts, records, figs = [], [], []
    if runs.empty:
        return "", records, figs
    for name in sorted(n for n in runs["tags.xkd.study"].unique() if n):
        sel = runs[runs["tags.xkd.study"] == name]
        md, recs, fig = _study(name, sel, out, notes)
        parts.append(md), records.extend(recs), figs.append(fig)
    return "\n".join(parts), records, figs


def _value(v):
    try:
        f = float(v)
        return int(f) if f.is_integer() and "." not in str(v) else f
    except (TypeError, ValueError):
        return str(v)


def _study(name: str, sel: pd.DataFrame, out: Path, notes: Footnotes):
    task_name = sel["params.task"].iloc[0]
    task = task_info(task_name)
    sel = with_keys(sel)
    swept = differing(sel, variant_columns(sel) + setting_columns(sel))
    swept = [c for c in swept if c != "params.seed"]
    objective = f"best_{task.selection_metric}" if task else "best_val_top1"
    primary, primary_label = task.summary_metrics[0] if task else ("test_top1", "test top-1")
    lower = lower_is_better(task)
    groups = list(sel.groupby(swept, sort=True)) if swept else [((), sel)]
    rows, records, xs, val_stats, test_stats = [], [], [], [], []
    for values, g in groups:
        values = values if isinstance(values, tuple) else (values,)
        v = summary(per_seed(g.get(f"metrics.{objective}", pd.Series(dtype=float)), g["params.seed"]))
        t = summary(per_seed(g.get(f"metrics.{primary}", pd.Series(dtype=float)), g["params.seed"]))
        keep = g.drop_duplicates("params.seed", keep="last")
        rows.append([*[str(x) for x in values], _ci(v) + notes.add(list(keep["run_id"])), _ci(t)])
        xs.append(_value(values[0]) if len(values) == 1 else ", ".join(map(str, values)))
        val_stats.append(v), test_stats.append(t)
        records.append(
            {
                "study": name,
                "task": task_name,
                "method": ",".join(sorted(g["params.method"].unique())),
                **{c.removeprefix("params.").removeprefix("hp."): x for c, x in zip(swept, values)},
                **{f"val_{k}": x for k, x in v.items()},
                **{f"test_{k}": x for k, x in t.items()},
            }
        )
    means = [s["mean"] for s in val_stats]
    valid = [i for i, m in enumerate(means) if pd.notna(m)]
    best = (min if task and task.selection_mode == "min" else max)(valid, key=lambda i: means[i]) if valid else None
    for i, r in enumerate(records):
        r["best_on_validation"] = i == best
    if best is not None:
        rows[best][0] = f"**{rows[best][0]}** (best on validation)"
    methods = ", ".join(sorted(sel["params.method"].unique()))
    label = next(iter(setting_labels(sel, task, set(swept)).values()))
    heading = f"study `{name}`: {methods} on {task_name} [{label}]"
    swept_names = [c.removeprefix("params.").removeprefix("hp.") for c in swept] or ["(nothing swept)"]
    header = [*swept_names, f"validation {objective} (mean, 95% CI over seeds)", f"{primary_label} (mean, 95% CI)"]
    lines = [
        f"### {heading}",
        "",
        f"Swept: {', '.join(swept_names)}; {len(groups)} values x {sel['params.seed'].nunique()} seed(s); "
        f"objective: {objective} ({'lower' if task and task.selection_mode == 'min' else 'higher'} is better), "
        f"chosen on validation only; the test column is shown, never used to choose. "
        f"({'lower' if lower else 'higher'} {primary} is better.)",
        "",
        table(header, rows),
        "",
    ]
    if best is not None:
        b = records[best]
        lines.append(
            f"Best on validation: {', '.join(f'{k}={b[k]}' for k in swept_names if k in b) or 'the only value'}; "
            f"its {primary_label}: {fmt_mean_std(b['test_mean'], b['test_std'], b['test_n'])}."
        )
        lines.append("")
    path = figures.values_plot(
        xs,
        [(f"validation {objective}", val_stats), (primary_label, test_stats)],
        " / ".join(swept_names),
        heading,
        out / f"study_{slug(name)}.png",
        best,
    )
    lines += [f"![{heading}]({path.name})", ""]
    return "\n".join(lines), records, (heading, path)


def study_summary(records: list[dict]) -> str:
    """One verdict line per study for the report's summary: the value best on validation, its test result, and
    whether the values' validation means differ by more than their seeds' spread (a range narrower than each
    value's 95% CI half-width is not shown to matter; a claim that it does needs a paired test)."""
    lines = []
    for name in dict.fromkeys(r["study"] for r in records):
        rs = [r for r in records if r["study"] == name]
        best = next((r for r in rs if r["best_on_validation"]), None)
        if best is None:
            continue
        swept = [
            k for k in best if k not in ("study", "task", "method", "best_on_validation") and not k.startswith(("val_", "test_"))
        ]
        means = [r["val_mean"] for r in rs if pd.notna(r["val_mean"])]
        halves = [r["val_ci_high"] - r["val_mean"] for r in rs if pd.notna(r.get("val_ci_high"))]
        spread = max(means) - min(means)
        what = ", ".join(f"{k}={best[k]}" for k in swept) or "the only value"
        line = (
            f"**Study `{name}`** ({best['method']} on {best['task']}, {len(rs)} values): best on validation "
            f"{what} ({best['val_mean']:.2f}); its test result "
            f"{fmt_mean_std(best['test_mean'], best['test_std'], best['test_n'])}."
        )
        if len(rs) > 1 and halves:
            line += f" The values' validation means span {spread:.2f} points, " + (
                f"less than the seeds' spread (95% CI half-widths {min(halves):.1f}-{max(halves):.1f}): "
                "this table does not show that the choice matters (an unpaired reading; a paired test of the "
                "chosen value against the others, seed by seed, is the one that could)."
                if spread < min(halves)
                else f"more than the narrowest 95% CI half-width ({min(halves):.1f}): a lead, to be confirmed by a "
                "paired test of the chosen value against the others."
            )
        lines += [line, ""]
    return "\n".join(lines)
