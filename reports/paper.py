"""The paper's tables (Tables 1-12 and the same-modality control) with our runs beside the published numbers.

How runs become cells: one column block per setting (reports/grouping.py), one row per method configuration
(the union of the paper's rows and ours; "-" in the paper columns for ours only); a cell is mean ± sample
std over distinct seeds; Δ pairs each seed with the baseline's run of the same seed in the same setting (t-based
95% CI, Holm over the column). Study runs appear only in the ablation of their `--paper` study; runs left out
are counted in a note under the table. Only tables with runs are rendered unless `with_paper` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark.registry import BASELINE
from benchmark.stats import Paired, describe, holm, paired_difference, per_seed
from reports import figures
from reports.grouping import differing, label_of, setting_columns, setting_labels, variant_columns
from reports.grouping import key_of as _key
from reports.leaderboard import teacher_line
from reports.markdown import Footnotes
from reports.runs import is_method, task_info
from reports.specs import AMBIGUITY_PARAMS, TABLES, TableSpec

PAPER_DIR = Path(__file__).parent / "paper_tables"


def _match(series: pd.Series, value, scale: float) -> pd.Series:
    try:
        target = float(value) * scale
    except ValueError:
        return series.astype(str) == value
    return pd.to_numeric(series, errors="coerce").sub(target).abs() < 1e-9


def select_pool(spec: TableSpec, runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The runs this table shows, and a note for each kind of run of the same task it leaves out."""
    if runs.empty:
        return runs, []
    same_task = runs[runs["params.task"] == spec.task]
    notes, pool = [], same_task
    if spec.study:
        pool = same_task[same_task["tags.xkd.paper_table"] == spec.id]
        other = same_task[same_task["tags.xkd.paper_table"] != spec.id]
        if len(other):
            notes.append(f"{len(other)} finished {spec.task} runs outside the `--paper {spec.id}` study are not shown")
        return pool, notes
    in_study = same_task["tags.xkd.study"] != ""
    if in_study.any():
        notes.append(f"{int(in_study.sum())} finished {spec.task} runs of Optuna studies are not shown (see the ablation tables)")
    pool = same_task[~in_study]
    if "data_fraction" not in {p for p, _ in spec.row_params.values()} and not pool.empty:
        task = task_info(spec.task)
        default = {p: float(v.get("data_fraction", 1.0)) for p, v in (task.profiles.items() if task else [])}
        full = pd.to_numeric(pool["params.data_fraction"]) - pool["params.profile"].map(default).fillna(1.0)
        keep = full.abs() < 1e-9
        if (~keep).any():
            fr = sorted(pool.loc[~keep, "params.data_fraction"].astype(float).unique())
            notes.append(
                f"{int((~keep).sum())} finished runs at a data fraction other than their profile's "
                f"({', '.join(f'{f:g}' for f in fr)}) are not shown (Fig. 9 analogue)"
            )
        pool = pool[keep]
    return pool, notes


@dataclass
class _Layout:
    """One table's runs laid out: each keyed by its setting (a column block) and its variant (a row when a
    method ran in several configurations), the settings' labels, and the metrics of ours it shows."""

    spec: TableSpec
    pool: pd.DataFrame
    labels: dict[str, str]
    vcols: list[str]
    ours: list[tuple[str, str]]


def _layout(spec: TableSpec, pool: pd.DataFrame) -> _Layout:
    task = task_info(spec.task)
    ours = list(spec.ours)
    if spec.study and task is not None:
        ours.append(("best validation " + task.selection_metric, f"best_{task.selection_metric}"))
    if pool.empty:
        return _Layout(spec, pool, {}, [], ours)
    row_param_cols = {f"params.{p}" for p, _ in spec.row_params.values()}
    pool = pool.copy()
    vcols = variant_columns(pool, row_param_cols)
    pool["_setting"] = _key(pool, setting_columns(pool, row_param_cols))
    pool["_variant"] = _key(pool, vcols)
    return _Layout(spec, pool, setting_labels(pool, task, row_param_cols), vcols, ours)


def _header(t: _Layout, paper: pd.DataFrame) -> list[str]:
    header = list(paper.columns)
    for lab in t.labels.values():
        header += [f"ours {m_label} [{lab}]" for m_label, _ in t.ours]
        if t.spec.paired:
            header.append(f"Δ {t.spec.paired} vs baseline, 95% CI [{lab}]")
    return header


def _variants(t: _Layout, method: str, match) -> list[tuple[str, pd.DataFrame]]:
    """(variant label, runs) of one table row; several when the method ran in several configurations."""
    pool = t.pool
    sel = pool[(pool["params.method"] == method) & match(pool)] if not pool.empty else pool
    if sel.empty:
        return [("", sel)]
    variants = sel.drop_duplicates("_variant")
    named = differing(pool[pool["params.method"] == method].drop_duplicates("_variant"), t.vcols)
    return [(label_of(v, named), sel[sel["_variant"] == v["_variant"]]) for _, v in variants.iterrows()]


def _cells(t: _Layout, method: str, sel: pd.DataFrame, notes: Footnotes) -> list:
    """Our cells of one row: per setting, each metric's mean ± std over seeds, then the paired Δ (a Paired
    until its column is adjusted)."""
    out: list = []
    for setting in t.labels:
        s = sel[sel["_setting"] == setting] if not sel.empty else sel
        for _, metric in t.ours:
            col = f"metrics.{metric}"
            if s.empty:
                out.append("not run")
                continue
            if col not in s or s[col].dropna().empty:  # the runs exist; the metric is undefined for them
                space = s["params.match_space"].iloc[0] if "params.match_space" in s else ""
                out.append(
                    f"n/a ({len(s)} runs; {space})"
                    if str(space).startswith("undefined")
                    else f"n/a ({len(s)} runs without this metric)"
                )
                continue
            v = per_seed(s[col], s["params.seed"])
            keep = s.drop_duplicates("params.seed", keep="last")
            out.append(describe(v) + notes.add(list(keep["run_id"])))
        if t.spec.paired:
            out.append(paired_cell(method, s, t.pool[t.pool["_setting"] == setting], t.spec.paired))
    return out


def _row_match(spec: TableSpec, row: pd.Series):
    """The runs of a paper row: those whose parameters equal the row's values (an empty value restricts nothing:
    Table 2's baseline rows name no teacher)."""

    def match(df: pd.DataFrame) -> pd.Series:
        ok = pd.Series(True, index=df.index)
        for col, (param, scale) in spec.row_params.items():
            if row[col] == "":
                continue
            ok &= _match(df[f"params.{param}"], row[col], scale) if f"params.{param}" in df else False
        return ok

    return match


def _paper_rows(t: _Layout, paper: pd.DataFrame, notes: Footnotes) -> tuple[list[list], pd.Series | None]:
    """The paper's rows, each with our cells beside it, and which of our runs they showed."""
    body: list[list] = []
    matched = pd.Series(False, index=t.pool.index) if not t.pool.empty else None
    for _, row in paper.iterrows():
        method = t.spec.method_alias.get(row["method"], row["method"])
        if not is_method(method):  # a reference row of the paper (chance level): nothing of ours belongs there
            n_ours = len(t.labels) * (len(t.ours) + (1 if t.spec.paired else 0))
            body.append([str(row[c]) for c in paper.columns] + ["—"] * n_ours)
            continue
        for variant, sel in _variants(t, method, _row_match(t.spec, row)):
            if matched is not None and not sel.empty:
                matched.loc[sel.index] = True
            first = [str(row[c]) for c in paper.columns]
            if variant:
                first[0] = f"{first[0]} ({variant})"
            body.append(first + _cells(t, method, sel, notes))
    return body, matched


def _extra_rows(t: _Layout, paper: pd.DataFrame, extra: pd.DataFrame, notes: Footnotes) -> list[list]:
    """Rows we ran that the paper's table lacks (a method it did not run, or another grid value)."""
    body: list[list] = []
    keys = ["params.method"] + [f"params.{p}" for p, _ in t.spec.row_params.values() if f"params.{p}" in extra]
    for _, first_run in extra.drop_duplicates(keys).iterrows():
        same = (extra[keys].fillna("").astype(str) == first_run[keys].fillna("").astype(str)).all(axis=1)
        method = first_run["params.method"]
        by_row = extra[same]
        for variant, sel in _variants(t, method, lambda df, idx=by_row.index: df.index.isin(idx)):
            first = []
            for c in paper.columns:
                if c == "method":
                    first.append(method + (f" ({variant})" if variant else ""))
                elif c in t.spec.row_params:
                    param, scale = t.spec.row_params[c]
                    val = first_run.get(f"params.{param}")
                    try:
                        first.append(f"{float(val) / scale:g}")
                    except (TypeError, ValueError):
                        first.append(str(val))
                else:
                    first.append("-")
            body.append(first + _cells(t, method, sel, notes))
    return body


def table_section(spec: TableSpec, runs: pd.DataFrame, notes: Footnotes) -> str:
    """One paper table: select its runs, lay them out, build the rows (the paper's, then ours it lacks) and their
    cells, adjust each Δ column, render."""
    paper = pd.read_csv(PAPER_DIR / spec.csv, dtype=str, keep_default_na=False)  # values exactly as printed
    pool, left_out = select_pool(spec, runs)
    t = _layout(spec, pool)
    header = _header(t, paper)
    body, matched = _paper_rows(t, paper, notes)
    extra = t.pool[~matched] if matched is not None else t.pool
    if not extra.empty:
        body += _extra_rows(t, paper, extra, notes)
    for col in range(len(header)):  # each Δ column (one setting) is one family of comparisons against the baseline
        holm([r[col] for r in body if isinstance(r[col], Paired)])
    return _render(t, header, body, left_out)


def _render(t: _Layout, header: list[str], body: list[list], left_out: list[str]) -> str:
    lines = [f"## {t.spec.title}", ""]
    if not t.pool.empty:  # how strong the teacher was, per setting: a reader must see it before the numbers
        lines += [teacher_line(t.pool[t.pool["_setting"] == setting], lab) for setting, lab in t.labels.items()] + [""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in body]
    lines.append("")
    if not t.labels:
        lines.append(
            f"Ours: no finished runs of task `{t.spec.task}`"
            + (f" in a `--paper {t.spec.id}` study" if t.spec.study else "")
            + " in this store."
        )
    for n in left_out:
        lines.append(f"Note: {n}.")
    forms = form_note(t.pool)
    if forms:
        lines.append(forms)
    return "\n".join(lines) + "\n"


def form_note(pool: pd.DataFrame) -> str:
    """Which form each method with a published map form and a vector adaptation ran in (its `*_form` run
    parameter): a row is the published method only in its map form."""
    cols = [c for c in pool.columns if c.startswith("params.") and c.endswith("_form") and not c.startswith("params.hp.")]
    found = []
    for c in sorted(cols):
        method = c.removeprefix("params.").removesuffix("_form")
        vals = sorted(pool.loc[pool["params.method"] == method, c].dropna().astype(str).unique())
        if vals:
            found.append(f"{method}: {'/'.join(vals)}")
    if not found:
        return ""
    return (
        "Form of the methods that have a published map form and a vector adaptation, as these runs record it "
        f"(`*_form`): {'; '.join(found)}. `maps` is the published method (comparable with a published row); "
        "`vector` is the adaptation to a teacher embedding."
    )


def paired_cell(method: str, sel: pd.DataFrame, setting_runs: pd.DataFrame, metric: str) -> str | Paired:
    if method == BASELINE:
        return "—"
    col = f"metrics.{metric}"
    base = setting_runs[setting_runs["params.method"] == BASELINE] if not setting_runs.empty else setting_runs
    if sel.empty or base.empty or col not in sel:
        return "—"
    # the baseline configuration with the most seeds (the baseline has no method hyperparameters to vary)
    biggest = base.groupby("_variant")["params.seed"].nunique().idxmax()
    base = base[base["_variant"] == biggest]
    p = paired_difference(per_seed(sel[col], sel["params.seed"]), per_seed(base[col], base["params.seed"]))
    return p if p else "no matched seeds"


def _once(vals: list[str]) -> list[str]:
    """Values that differ only in their numbers (a data seed per run seed) are shown once, with a count."""
    import re

    if len(vals) > 1 and len({re.sub(r"\d+", "#", v) for v in vals}) == 1:
        return [f"{vals[0]} (and {len(vals) - 1} more of this form, differing only in their numbers: one per seed)"]
    return vals


def header_section(runs: pd.DataFrame) -> str:
    """What the runs are, one column per task (so each size or teacher sits under its own task)."""
    tasks = sorted(runs["params.task"].unique())
    fields = [
        ("profiles", "params.profile"),
        ("students", "params.student"),
        ("teachers", "params.teacher_id"),
        ("seeds", "params.seed"),
        ("data layout", "params.data_layout"),
        ("train/val/test sizes", None),
        ("split rule", "params.split_rule"),
        ("selection rule", "params.selection_rule"),
        ("device", "params.device_resolved"),
        ("torch", "params.torch_version"),
        ("code version", "params.code_version"),
        *[(p, f"params.{p}") for p in AMBIGUITY_PARAMS],
    ]
    rows = []
    for label, col in fields:
        cells = []
        for t in tasks:
            r = runs[runs["params.task"] == t]
            if col is None:
                vals = sorted(
                    {
                        f"{a}/{b}/{c}"
                        for a, b, c in zip(r.get("params.n_train", []), r.get("params.n_val", []), r.get("params.n_test", []))
                    }
                )
            else:
                vals = sorted(r[col].dropna().astype(str).unique()) if col in r else []
                vals = _once(vals) if label == "split rule" else vals
            cells.append(", ".join(vals))
        if any(cells):
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return (
        "\n".join(["| what | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks), *rows])
        + "\n\n"
        + (
            "The `hp.*` rows: the readings chosen where the paper is ambiguous (methods/README.md's register of "
            "ambiguities; each an option of its method, recorded in every run), as the runs used them.\n"
            if any(r.startswith("| hp.") for r in rows)
            else ""
        )
    )


def has_runs(spec: TableSpec, runs: pd.DataFrame) -> bool:
    return not select_pool(spec, runs)[0].empty


def fig_ablations(runs: pd.DataFrame, out: Path, with_paper: bool = False) -> list[tuple[str, Path]]:
    """The paper's ablation curves (its points on the right axis) with ours, for ablations we ran (all of
    them with `with_paper`)."""
    paths = []
    for spec in TABLES:
        if not spec.study or not (with_paper or has_runs(spec, runs)):
            continue
        col, (param, scale) = next(iter(spec.row_params.items()))
        paper = pd.read_csv(PAPER_DIR / spec.csv)
        pool, _ = select_pool(spec, runs)
        metric = f"metrics.{spec.ours[0][1]}"
        fig, ax = figures.plt.subplots(figsize=(5.5, 4))
        ax2 = ax.twinx()
        for pc in spec.paper_cols[:2]:
            if "mindcf" in pc:
                continue
            ax2.plot(pd.to_numeric(paper[col]).fillna(0) * scale, pd.to_numeric(paper[pc]), "s--", alpha=0.7, label=f"paper {pc}")
        if not pool.empty and metric in pool and f"params.{param}" in pool:
            pool = pool.assign(_setting=_key(pool, setting_columns(pool, {f"params.{param}"})))
            for _, g in pool.groupby("_setting"):
                x = pd.to_numeric(g[f"params.{param}"])
                stats = [(v, per_seed(h[metric], h["params.seed"])) for v, h in g.assign(x=x).groupby("x")]
                xs = [v for v, _ in stats]
                mean = [s.mean() for _, s in stats]
                sd = [s.std(ddof=1) if len(s) > 1 else 0.0 for _, s in stats]
                first = g.iloc[0]
                ax.errorbar(
                    xs,
                    mean,
                    yerr=sd,
                    marker="o",
                    capsize=3,
                    label=f"ours [{first['params.student']}, {first['params.profile']}] (± std)",
                )
        ax.set_xlabel(param.replace("hp.", "")), ax.set_ylabel(f"ours: {spec.ours[0][1]}"), ax2.set_ylabel("paper")
        who = (
            "; ".join(sorted({f"{r['params.student']}, {r['params.profile']}" for _, r in pool.iterrows()}))
            if not pool.empty
            else "no runs of ours"
        )
        figures.title(fig, f"{spec.title.split(':')[0]} ablation ({spec.task}; {who})")
        for a, where in ((ax, "lower left"), (ax2, "lower right")):
            if a.get_legend_handles_labels()[0]:
                a.legend(loc=where, fontsize=7)
        paths.append(
            (
                f"Ablation curve {spec.id} (ours, paper points on the right axis)",
                figures.save(fig, out / f"{spec.id}_ablation.png"),
            )
        )
    return paths
