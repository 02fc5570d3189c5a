"""The leaderboard, first in every report: per task and setting, every method configuration with its
summary metrics (mean ± std over distinct seeds), Δ vs the baseline on the primary metric (paired over
matched seeds, raw 95% CI, Holm-adjusted p over the table), the teacher's accuracy and what the run cost;
sorted by the primary metric. The same numbers go to report.csv; a forest plot of the Δs goes beside it."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pandas as pd

from benchmark.protocol import all_protocols, assess
from benchmark.registry import BASELINE
from benchmark.stats import (
    ALPHA,
    comparison_record,
    describe,
    fmt_mean_std,
    holm,
    paired_difference,
    per_seed,
    power_line,
    summary,
)
from reports import figures
from reports.grouping import baseline_of, configurations, reported_metrics, task_pools
from reports.markdown import Footnotes, slug, table
from reports.runs import lower_is_better, why_not_finished

CONFIRMATORY = " — confirmatory"  # the row label's suffix of a protocol's confirmatory comparison
# the teacher's own accuracy, as each kind of teacher records it
TEACHER_ACCURACY = [
    ("params.teacher_test_acc", "test top-1"),
    ("params.teacher_test_top1", "test top-1"),
    ("params.teacher_prompt_top1", "top-1 on its own prompts"),
    ("params.teacher_probe_train_acc", "probe train top-1"),
]
COST = [
    ("params.n_params_student", "student params"),
    ("metrics.mean_train_images_per_s", "train samples/s"),
    ("metrics.wall_s", "wall s/run"),
    ("metrics.gflop_per_step", "GFLOP/step"),
]


def teacher_line(runs: pd.DataFrame, label: str) -> str:
    facts = [
        f"{name} {describe(per_seed(runs[col], runs['params.seed']))}"
        for col, name in TEACHER_ACCURACY
        if col in runs and runs[col].notna().any()
    ]
    tid = runs["params.teacher_id"].iloc[0] if "params.teacher_id" in runs else "?"
    keys = runs["params.teacher_cache_key"].dropna().nunique() if "params.teacher_cache_key" in runs else 0
    if keys > 1:  # the synthetic task draws its data per seed, and its teacher learns from each draw
        tid += f" (one teacher per seed: {keys} of them, one for each seed's data)"
    return f"Teacher [{label}]: {tid}" + (f"; {'; '.join(facts)} (over seeds)" if facts else "; no accuracy recorded")


def leaderboards(
    runs: pd.DataFrame, out: Path, notes: Footnotes, not_done: pd.DataFrame | None = None
) -> tuple[str, list[dict], list[tuple[str, Path]], str]:
    """(Markdown, report.csv records, figures, summary) for every task and setting with non-study runs; the
    summary (the report's opening: per setting its verdict and forest plot) is separate from the tables.
    `not_done` (failed, killed, running runs) enter no statistic, but every table accounts for those of its
    setting: a configuration without a finished run keeps its row, and its comparison counts in Holm's family."""
    both = runs if not_done is None or not_done.empty else pd.concat([runs, not_done], ignore_index=True)
    parts, records, figs, summary = [], [], [], []
    for task_name, task, pool, labels in task_pools(both):
        done = pool[pool["run_id"].isin(runs["run_id"])]
        order = [
            *done["_setting"].value_counts().index,  # the most populated setting first
            *pool.loc[~pool["_setting"].isin(done["_setting"]), "_setting"].drop_duplicates(),
        ]
        for setting in order:
            here = pool[pool["_setting"] == setting]
            finished = here["run_id"].isin(runs["run_id"])
            md, recs, fig, verdict = _leaderboard_section(
                task_name, task, here[finished], labels[setting], out, notes, done, here[~finished]
            )
            parts.append(md), records.extend(recs), summary.append(verdict)
            if fig:
                figs.append(fig)
    return "\n".join(parts), records, figs, "\n".join(summary)


def _leaderboard_section(
    task_name, task, sel: pd.DataFrame, label: str, out: Path, notes: Footnotes, context: pd.DataFrame, bad: pd.DataFrame
):
    metrics = reported_metrics(task, sel)
    if not metrics:
        what = f"these {len(sel)} finished runs" if len(sel) else "any finished run (none finished)"
        lines = [f"### {task_name} [{label}]", "", f"No summary metric recorded by {what}."]
        if len(bad):
            lines.append(f"Not finished: {_not_finished(bad, sel)}.")
        return "\n".join(lines) + "\n", [], None, ""
    primary, primary_label = metrics[0]
    col = f"metrics.{primary}"
    base = baseline_of(sel)
    b = per_seed(base[col], base["params.seed"]) if not base.empty else None
    rows = []
    for row_label, method, g in configurations(sel, context=context):
        s = {m: summary(per_seed(g[f"metrics.{m}"], g["params.seed"])) for m, _ in metrics}
        p = paired_difference(per_seed(g[col], g["params.seed"]), b) if b is not None and method != BASELINE else None
        lost = bad[(bad["params.method"] == method) & (bad["_variant"] == g["_variant"].iloc[0])] if len(bad) else bad
        rows.append((row_label, method, g, s, p, _account(g, lost)))
    if len(bad):  # a configuration with no finished run keeps its row (no numbers), and its place in the family
        have = set(zip(sel["params.method"], sel["_variant"]))
        for row_label, method, g in configurations(bad, context=pd.concat([context, bad])):
            if (method, g["_variant"].iloc[0]) not in have:
                rows.append(
                    (
                        row_label,
                        method,
                        g,
                        {m: summary(pd.Series(dtype=float)) for m, _ in metrics},
                        None,
                        _account(g.iloc[:0], g),
                    )
                )  # g: its unfinished runs, named in its footnote
    protocol = assess(sel, context, known_protocols())
    if protocol is not None and protocol.confirmatory and protocol.protocol.metric != primary:
        protocol.reasons = [f"the protocol tests {protocol.protocol.metric}, this table's metric is {primary}"]
    prim = confirmed_row(rows, protocol)
    family = [r[4] for i, r in enumerate(rows) if i != prim and r[1] != BASELINE]
    holm(family)  # the exploratory family, untested members counted; a confirmatory comparison is tested alone
    # what went wrong first, then the verdict
    verdict = checks(task, rows, sel, primary, primary_label) + _verdict(task, rows, prim, family, primary_label, protocol)
    missing = [(r[0], r[5]) for r in rows if r[5]]
    if missing:
        untested = sum(1 for r in rows if r[1] != BASELINE and r[4] is None and r[5])
        verdict += [
            "**Not finished**: "
            + "; ".join(f"{k}: {v}" for k, v in missing)
            + (
                f". {'Its comparison stays' if untested == 1 else f'Their {untested} comparisons stay'} in "
                "Holm's family as untested (never rejected): no other method's verdict gains from a failure"
                if untested
                else ""
            )
            + ".",
            "",
        ]
    if prim is not None:
        rows[prim] = (rows[prim][0] + CONFIRMATORY, *rows[prim][1:])
    lower = lower_is_better(task)
    rows.sort(key=lambda r: (pd.isna(r[3][primary]["mean"]), r[3][primary]["mean"] * (1 if lower else -1)))
    header = [
        "rank",
        "method",
        *[lab for _, lab in metrics],
        f"Δ {primary_label} vs baseline, 95% CI",
        *[lab for c, lab in COST if c in sel],
    ]
    body, records = [], []
    for rank, (row_label, method, g, s, p, account) in enumerate(rows, start=1):
        keep = g.drop_duplicates("params.seed", keep="last")
        ref = notes.add(list(keep["run_id"]))
        none_done = s[primary]["n"] == 0 and bool(account)
        cost = {
            lab: math.nan if none_done else summary(pd.to_numeric(keep[c], errors="coerce"))["mean"]
            for c, lab in COST
            if c in sel
        }
        delta = "—" if method == BASELINE else (str(p) if p else "no baseline of this setting")
        if account:
            delta = f"not tested: {account}" if none_done else f"{delta} ({account})"
        body.append(
            [
                rank,
                row_label + ref,
                *[fmt_mean_std(s[m]["mean"], s[m]["std"], s[m]["n"]) for m, _ in metrics],
                delta,
                *[_num(v, lab) for lab, v in cost.items()],
            ]
        )
        rec = {
            "task": task_name,
            "setting": label,
            "method": method,
            "configuration": row_label,
            "rank": rank,
            "primary_metric": primary,
            "lower_is_better": lower,
            "confirmatory": row_label.endswith(CONFIRMATORY),
        }
        for m, _ in metrics:
            rec.update({f"{m}_{k}": v for k, v in s[m].items()})
        rec.update(comparison_record(p))
        rec.update({lab.replace(" ", "_").replace("/", "_per_"): v for lab, v in cost.items()})
        rec["run_ids"] = " ".join(keep["run_id"])
        if account:  # the column exists only in a report with unfinished runs
            rec["not_finished"] = account
        records.append(rec)
    fig = None
    forest_rows = [(r[0], r[4]) for r in rows if r[4] is not None]
    heading = f"{task_name}: {label}"
    if forest_rows:
        path = figures.forest(
            forest_rows,
            f"Δ {primary_label} vs baseline",
            f"Δ vs baseline, {heading}",
            out / f"forest_{slug(task_name + '_' + label)}.png",
        )
        fig = (f"Δ vs baseline, {heading}", path)
    lines = [f"### {heading}", "", teacher_line(sel, label), "", table(header, body), ""]
    opening = [f"### {heading}", "", *verdict]
    if fig:
        opening += [f"![{fig[0]}]({fig[1].name})", ""]
    return "\n".join(lines), records, fig, "\n".join(opening)


def _account(done: pd.DataFrame, lost: pd.DataFrame) -> str:
    """'k of n finished (why ...)' for a configuration (its finished runs, its unfinished ones) with seeds that
    have no finished run; '' otherwise."""
    seeds = set(done["params.seed"])
    lost = lost[~lost["params.seed"].isin(seeds)].drop_duplicates("params.seed", keep="last")
    if lost.empty:
        return ""
    whys = lost.apply(why_not_finished, axis=1).value_counts()
    return (
        f"{len(seeds)} of {len(seeds) + len(lost)} finished ("
        + ", ".join(f"{n} {why}" for why, n in whys.sort_index().items())
        + ")"
    )


def _not_finished(bad: pd.DataFrame, sel: pd.DataFrame) -> str:
    return "; ".join(f"{m}: {_account(sel[sel['params.method'] == m], g)}" for m, g in bad.groupby("params.method"))


@functools.lru_cache(maxsize=1)
def known_protocols() -> dict:
    """The protocols of this checkout's protocols/ folder, by tag (benchmark/protocol.py)."""
    return all_protocols()


def confirmed_row(rows, verdict) -> int | None:
    """The index of the row that is a protocol's confirmatory comparison (its primary method against the
    baseline), when the setting's runs are that protocol's and match its declaration."""
    if verdict is None or not verdict.confirmatory:
        return None
    for i, (method, p) in enumerate((r[1], r[4]) for r in rows):
        if method == verdict.protocol.primary and p is not None:
            return i
    return None


def _verdict(task, rows, prim, family, metric_label, protocol=None) -> list[str]:
    """The lines that open a setting's table: the confirmatory test (or why a protocol's runs are not one), the
    exploratory family after Holm, its power."""
    out = []
    if prim is not None:
        p, proto, decl = rows[prim][4], protocol.protocol, protocol.declared
        alpha = proto.alpha
        better = (p.mean < 0) if lower_is_better(task) else (p.mean > 0)
        test = (
            "not testable (no spread)"
            if p.n < 2 or p.no_spread
            else f"p = {p.p:.2g}, two-sided at α = {alpha:g} as declared: "
            + (
                ("**resolved: better than the baseline**" if better else "**resolved: worse than the baseline**")
                if p.p < alpha
                else "not resolved"
            )
        )
        out += [
            f"**Confirmatory** (protocol `{proto.name}`, declared in commit {decl.commit[:12]} at "
            f"{decl.time:%Y-%m-%d %H:%M} UTC; its first run started {protocol.first_start:%Y-%m-%d %H:%M} UTC; "
            f"the {len(proto.seeds)} declared seeds {proto.seeds[0]}-{proto.seeds[-1]}): {rows[prim][0]} vs "
            f"{proto.baseline}, Δ {metric_label} {p.mean:+.2f} points [{p.lo:+.2f}, {p.hi:+.2f}] (n = {p.n}), "
            f"{test}.",
            "",
        ]
    elif protocol is not None:
        out += [
            f"**Protocol `{protocol.tag}`, not confirmatory**: "
            + "; ".join(protocol.reasons or [])
            + ". Every comparison here is exploratory.",
            "",
        ]
    tested = [c for c in family if c is not None and c.n >= 2 and not c.no_spread]
    if tested:
        lower = lower_is_better(task)
        best = max(
            ((r[0], r[4]) for i, r in enumerate(rows) if i != prim and r[4] is not None and r[4] in tested),
            key=lambda x: -x[1].mean if lower else x[1].mean,
        )
        survive = sum(c.significant for c in tested)
        better = sum(c.significant and (c.mean < 0 if lower else c.mean > 0) for c in tested)
        raw_only = sum(c.raw_significant and not c.significant for c in tested)
        which = f" ({better} better than the baseline, {survive - better} worse)" if survive else ""
        size = (
            f"{len(tested)} comparison{'s' if len(tested) > 1 else ''} with the baseline"
            if len(tested) == len(family)
            else f"{len(tested)} of {len(family)} comparisons with the baseline tested, Holm over all {len(family)}"
        )
        line = (f"**Exploratory** ({size}, Holm): " if len(tested) == len(family) else f"**Exploratory** ({size}): ") + (
            f"{survive} survive{'s' if survive == 1 else ''} the correction{which}; the best is {best[0]}, Δ "
            f"{best[1].mean:+.2f} [{best[1].lo:+.2f}, {best[1].hi:+.2f}], p_Holm = {best[1].p_adj:.2g}."
        )
        if raw_only:
            line += (
                f" {raw_only} raw 95% CI{'s' if raw_only > 1 else ''} exclude{'s' if raw_only == 1 else ''} 0 "
                f"without surviving: with {len(family)} comparisons, some raw intervals exclude 0 by chance, "
                "and Holm's correction keeps the chance of any false claim in the table under 5%."
            )
        out += [line, "", power_line(family, len(family)), ""]
    elif prim is not None:
        out += [power_line([rows[prim][4]], 1), ""]
    if not out:
        out = ["No comparison with the baseline in this setting (it has no baseline run, or too few seeds).", ""]
    return out


def checks(task, rows, sel: pd.DataFrame, primary: str, primary_label: str) -> list[str]:
    """What went wrong, said before the tables: a configuration at or below chance on a top-1 metric, a training
    loss that stayed flat, a positive control that did not beat the baseline, a smoke-profile table (a plumbing
    check). Runs that did not record what a check needs are not checked (chance needs params.num_classes, a flat
    loss metrics.first_epoch_train_loss)."""
    out = []
    for label, method, g, s, p, _ in rows:
        mean = s[primary]["mean"]
        classes = pd.to_numeric(g.get("params.num_classes", pd.Series(dtype=float)), errors="coerce").dropna()
        if "top1" in primary and len(classes) and not pd.isna(mean) and mean <= 100 / classes.iloc[0]:
            out.append(
                f"{label}: {primary_label} {mean:.2f} is at or below chance ({100 / classes.iloc[0]:.2f} for "
                f"{classes.iloc[0]:.0f} classes): it learned nothing the metric can see"
            )
        if {"metrics.first_epoch_train_loss", "metrics.train_loss"} <= set(g):
            first, last = (
                pd.to_numeric(g[c], errors="coerce").mean() for c in ("metrics.first_epoch_train_loss", "metrics.train_loss")
            )
            if first > 0 and last >= 0.95 * first:
                out.append(
                    f"{label}: its training loss stayed flat ({first:.3f} after the first epoch, {last:.3f} "
                    "after the last): check its loss weights and learning rate"
                )
        if method == getattr(task, "positive_control", None) and method != BASELINE:
            lower = lower_is_better(task)
            if p is None or p.n < 2 or p.no_spread or not p.p < ALPHA or (p.mean > 0) == lower:
                shown = f"Δ {p}" if p is not None else "no paired comparison"
                out.append(
                    f"the positive control {label} did not beat the baseline ({shown}): the set-up is in "
                    "doubt, and a null result of another method in this setting means nothing"
                )
    lines = [f"**Check**: {x}." for x in out]
    if "params.profile" in sel and set(sel["params.profile"].dropna()) == {"smoke"}:
        name = sel["params.task"].iloc[0] if "params.task" in sel else "TASK"
        lines.append(
            f"**Smoke profile**: a plumbing check (tiny data, a few epochs): its numbers say nothing about "
            f"the methods. Next: `python -m benchmark run --task {name} --profile quick --seeds 3`."
        )
    return [x for line in lines for x in (line, "")]


def _num(v: float, column: str = "") -> str:
    """One unit per column: parameters in millions, samples/s as a whole number, seconds and GFLOP to 3 digits."""
    if pd.isna(v):
        return "n/a"
    if column == "student params":
        return f"{v / 1e6:.2f}M"
    if column == "train samples/s":
        return f"{v:,.0f}"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"
