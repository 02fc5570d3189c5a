"""`report --compare A B`: what changed between two stores (or two experiments of one store), per task,
method configuration and summary metric: B − A over the seeds both ran (paired by seed: the same seed is the
same data order and initialisation), with its t-based 95% CI and Holm's adjusted p over each metric's
column. What a user needs after changing a recipe or upgrading the code."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.stats import fmt_mean_std, holm, paired_difference, per_seed, summary
from reports.grouping import configurations, differing, key_of, setting_columns, variant_columns, with_keys
from reports.markdown import table
from reports.runs import load_runs, require_runs, task_info


def _main(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per task: its non-study runs in the most populated setting (with _setting / _variant keys)."""
    out = {}
    runs = runs[runs["tags.xkd.study"] == ""]
    for task_name, g in runs.groupby("params.task"):
        g = with_keys(g)
        out[task_name] = g[g["_setting"] == g["_setting"].value_counts().idxmax()]
    return out


def _changed(ra: pd.DataFrame, rb: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(column, A's value, B's value) of each setting field in which the two sides differ ('n/a': not logged)."""
    both = pd.concat([ra.assign(_side="A"), rb.assign(_side="B")], ignore_index=True)
    firsts = both.drop_duplicates("_side").set_index("_side")
    return [
        (c, _value(firsts, "A", c), _value(firsts, "B", c))
        for c in differing(firsts, setting_columns(both))
        if c != "params.seed"
    ]


def _value(firsts: pd.DataFrame, side: str, col: str) -> str:
    v = firsts.loc[side, col]
    return "n/a" if pd.isna(v) else str(v)


def _check_allowed(sides: list[dict[str, pd.DataFrame]], allow: tuple[str, ...]) -> None:
    """A comparison of two different settings is a confound unless the user names each difference."""
    from benchmark.registry import UsageError

    bad = []
    for task_name in sorted(set(sides[0]) & set(sides[1])):
        ra, rb = sides[0][task_name], sides[1][task_name]
        for c, x, y in _changed(ra, rb):
            field = c.removeprefix("params.")
            if field not in allow:
                bad.append((task_name, field, x, y))
    if bad:
        what = "; ".join(f"{t} {f}: {x} -> {y}" for t, f, x, y in bad)
        flags = " ".join(f"--allow {f}" for f in dict.fromkeys(f for _, f, _, _ in bad))
        raise UsageError(
            f"report --compare: the two sides' settings differ ({what}); a difference you mean to "
            f"compare across must be named: {flags}"
        )


def compare(
    a: tuple[str, str | None], b: tuple[str, str | None], out, allow: tuple[str, ...] = (), extra_metrics: tuple[str, ...] = ()
) -> Path:
    """a, b: (tracking URI, experiment or None). Writes compare.md and compare.csv into `out`. Sides whose
    settings differ are refused (before anything is written) unless every differing field is in `allow`
    (e.g. code_version after an upgrade, epochs after a change of recipe). `extra_metrics`: further metrics
    (a run's last value, e.g. train_loss) compared beside the task's summary metrics."""
    sides = []
    for uri, exp in (a, b):
        runs = load_runs(uri, exp)
        require_runs(runs, uri, exp)
        sides.append(_main(runs))
    name_a, name_b = (f"{u}" + (f" [{e}]" if e else "") for u, e in (a, b))
    lines = [
        "# Comparison of two sets of runs",
        "",
        f"A: `{name_a}`",
        "",
        f"B: `{name_b}`",
        "",
        "Per task (each side's most populated setting of non-study runs) and method configuration: each "
        "summary metric on A and on B (mean ± std over seeds), and B − A over the seeds both ran (paired by "
        "seed) with its raw t-based 95% CI and Holm's adjusted p over the column (one family); `*`: p_Holm < 0.05.",
        "",
    ]
    records = []
    _check_allowed(sides, allow)
    if allow:
        lines += [f"Allowed to differ (`--allow`): {', '.join(allow)}.", ""]
    for task_name in sorted(set(sides[0]) | set(sides[1])):
        if task_name not in sides[0] or task_name not in sides[1]:
            lines += [f"## {task_name}", "", f"Only {'A' if task_name in sides[0] else 'B'} has runs of this task.", ""]
            continue
        task = task_info(task_name)
        ra, rb = sides[0][task_name], sides[1][task_name]
        both = pd.concat([ra.assign(_side="A"), rb.assign(_side="B")], ignore_index=True)
        both["_variant"] = key_of(both, variant_columns(both))  # one key over both sides' columns
        what = "; ".join(f"{c.removeprefix('params.')}: {x} -> {y}" for c, x, y in _changed(ra, rb)) or "none"
        metrics = [
            (m, lab)
            for m, lab in [*(task.summary_metrics if task else [("test_top1", "test top-1")]), *((m, m) for m in extra_metrics)]
            if f"metrics.{m}" in both and both[f"metrics.{m}"].notna().any()
        ]
        lines += [f"## {task_name}", "", f"Setting fields that differ between A and B: {what}.", ""]
        rows, family = [], {m: [] for m, _ in metrics}
        for label, _, g in configurations(both):
            ga, gb = g[g["_side"] == "A"], g[g["_side"] == "B"]
            row, rec = [label], {"task": task_name, "configuration": label}
            for m, _ in metrics:
                col = f"metrics.{m}"
                sa, sb = per_seed(ga[col], ga["params.seed"]), per_seed(gb[col], gb["params.seed"])
                p = paired_difference(sb, sa) if len(sa) and len(sb) else None
                family[m].append(p)
                xa, xb = summary(sa), summary(sb)
                row += [fmt_mean_std(xa["mean"], xa["std"], xa["n"]), fmt_mean_std(xb["mean"], xb["std"], xb["n"]), p]
                rec.update({f"{m}_A_mean": xa["mean"], f"{m}_A_n": xa["n"], f"{m}_B_mean": xb["mean"], f"{m}_B_n": xb["n"]})
                rec["_" + m] = p
            rows.append(row), records.append(rec)
        for ps in family.values():
            holm(ps)
        for row in rows:
            for i, c in enumerate(row):
                if i and (i % 3 == 0):
                    row[i] = str(c) if c is not None else "no matched seed"
        header = ["configuration"] + [h for _, lab in metrics for h in (f"{lab} A", f"{lab} B", f"{lab} B − A, 95% CI")]
        lines += [table(header, rows), ""]
    for rec in records:
        for k in [k for k in rec if k.startswith("_")]:
            p = rec.pop(k)
            m = k[1:]
            rec.update(
                {f"{m}_change": p.mean, f"{m}_ci_low": p.lo, f"{m}_ci_high": p.hi, f"{m}_n_matched": p.n, f"{m}_p_holm": p.p_adj}
                if p
                else {f"{m}_n_matched": 0}
            )
    out = out() if callable(out) else out  # the folder is made only now: a refusal above leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(records).to_csv(out / "compare.csv", index=False)
    path = out / "compare.md"
    path.write_text("\n".join(lines) + "\n")
    return path
