"""Rebuild the paper's tables and figures from MLflow runs alone: paper numbers beside ours, traceable.

How runs become cells (the rules a reader needs to trust a table):
- A *setting* is everything in a run's configuration except the method, its hyperparameters and the seed
  (profile, student, teacher, data fraction, every other run-config field). Each setting found is its own
  block of columns, named by the fields in which the settings of that table differ.
- A *row* is a method (or, in an ablation, a grid value) and one hyperparameter configuration of it. Two
  configurations of one method are two rows, named by the hyperparameters that differ; never one mean.
  Rows are the union of the paper's rows and the rows we ran ("-" in the paper columns for ours only).
- A cell is mean ± sample std over distinct seeds (a rerun of a seed replaces it, it is not a second
  sample); with one seed the spread reads n/a. Δ pairs each seed with the baseline's run of the same seed
  in the same setting (t-based 95% CI; `*` when it excludes zero).
- Runs left out of a table (study runs in main tables, other data fractions, other studies) are counted
  in a note under it.
Metric names come from the task (its selection metric and its primary metric); no method name is special
here except `baseline`, the reference of the paired difference.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from benchmark.config import defining_fields
from benchmark.stats import Paired, describe, holm, paired_difference, per_seed
from reports.specs import AMBIGUITY_PARAMS, TABLES, TableSpec

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PAPER_DIR = Path(__file__).parent / "paper_tables"
BASELINE = "baseline"
# facts of a run beside its configuration that change what it computes: runs that differ in one never share
# a cell or pair (bf16 against fp32, a torchrun world size against one process, two code versions)
SETTING_FACTS = ["params.precision_resolved", "params.world_size", "params.code_version"]
# the teacher's own accuracy, as each kind of teacher records it (image/vector teachers on the test split; a
# text teacher classifying its own prompts; a linear probe on the teacher's training embeddings)
TEACHER_ACCURACY = [("params.teacher_test_acc", "test top-1"), ("params.teacher_prompt_top1", "top-1 on its own prompts"),
                    ("params.teacher_probe_train_acc", "probe train top-1")]


def load_runs(tracking_uri: str, experiment: str | None) -> pd.DataFrame:
    """Finished training runs (one per method x seed x config) of the harness, as a flat DataFrame."""
    import mlflow
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    exps = [e for e in client.search_experiments() if (e.name == experiment if experiment else e.name.startswith("xkd-"))]
    if not exps:
        return pd.DataFrame()
    df = mlflow.search_runs(experiment_ids=[e.experiment_id for e in exps], output_format="pandas",
                            filter_string="tags.`xkd.kind` = 'train' and attributes.status = 'FINISHED'")
    if df.empty:
        return df
    for col in ("tags.xkd.study", "tags.xkd.paper_table"):
        if col not in df:
            df[col] = None
        df[col] = df[col].fillna("")
    # a run-config field added after some runs were made: those runs ran with its default
    from dataclasses import asdict

    from benchmark.config import RunConfig
    for k, v in asdict(RunConfig()).items():
        if f"params.{k}" in df:
            df[f"params.{k}"] = df[f"params.{k}"].fillna(str(v))
    df = df.sort_values("start_time").reset_index(drop=True)
    return df


def task_info(name: str):
    """The registered task class (its metrics and profiles), or None for a task this harness lacks."""
    from benchmark.plugins import load_plugins
    from benchmark.registry import TASKS
    load_plugins()
    return TASKS.get(name) if name in TASKS else None


def is_method(name: str) -> bool:
    from benchmark.plugins import load_plugins
    from benchmark.registry import METHODS
    load_plugins()
    return name in METHODS


def _key(df: pd.DataFrame, cols: list[str]) -> pd.Series:
    cols = [c for c in cols if c in df]
    if not cols:
        return pd.Series([""] * len(df), index=df.index)
    return df[cols].fillna("").astype(str).agg("\x1f".join, axis=1)


def setting_columns(runs: pd.DataFrame, exclude: set[str]) -> list[str]:
    cols = [f"params.{f}" for f in defining_fields()] + ["params.teacher_id", "params.n_train", "params.n_val",
                                                         "params.n_test", "params.data_layout", "params.data_subset",
                                                         *SETTING_FACTS]
    return [c for c in dict.fromkeys(cols) if c in runs and c not in exclude and c != "params.task"]


def variant_columns(runs: pd.DataFrame, exclude: set[str]) -> list[str]:
    return sorted(c for c in runs if c.startswith("params.hp.") and c not in exclude)


def off_profile(run: pd.Series, task) -> list[str]:
    """The run-config fields of a run that differ from its profile's values (e.g. `--set epochs=2`)."""
    from dataclasses import asdict

    from benchmark.config import RunConfig
    if task is None or run.get("params.profile") not in task.profiles:
        return []
    expected = {**asdict(RunConfig()), **task.profiles[run["params.profile"]]}
    return [f"params.{k}" for k in defining_fields()
            if f"params.{k}" in run and pd.notna(run[f"params.{k}"]) and str(run[f"params.{k}"]) != str(expected[k])
            and k not in ("task", "profile")]


def differing(df: pd.DataFrame, cols: list[str]) -> list[str]:
    return [c for c in cols if df[c].fillna("").astype(str).nunique() > 1]


def label_of(row: pd.Series, cols: list[str]) -> str:
    return ", ".join(f"{c.removeprefix('params.').removeprefix('hp.')}={row[c]}" for c in cols)


class Footnotes:
    def __init__(self):
        self.notes: list[str] = []

    def add(self, run_ids: list[str]) -> str:
        self.notes.append("runs: " + ", ".join(f"`{r}`" for r in run_ids))
        return f"[^{len(self.notes)}]"

    def render(self) -> str:
        return "\n".join(f"[^{i + 1}]: {n}" for i, n in enumerate(self.notes))


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
            notes.append(f"{int((~keep).sum())} finished runs at a data fraction other than their profile's "
                         f"({', '.join(f'{f:g}' for f in fr)}) are not shown (Fig. 9 analogue)")
        pool = pool[keep]
    return pool, notes


def table_section(spec: TableSpec, runs: pd.DataFrame, notes: Footnotes) -> str:
    paper = pd.read_csv(PAPER_DIR / spec.csv, dtype=str, keep_default_na=False)  # values exactly as printed
    pool, left_out = select_pool(spec, runs)
    task = task_info(spec.task)
    ours = list(spec.ours)
    if spec.study and task is not None:
        ours.append(("best validation " + task.selection_metric, f"best_{task.selection_metric}"))
    row_param_cols = {f"params.{p}" for p, _ in spec.row_params.values()}
    if not pool.empty:
        pool = pool.copy()
        scols = setting_columns(pool, row_param_cols)
        vcols = variant_columns(pool, row_param_cols)
        pool["_setting"] = _key(pool, scols)
        pool["_variant"] = _key(pool, vcols)
        settings = pool.drop_duplicates("_setting").sort_values(["params.profile", "params.student"])
        named = differing(settings, scols)
        labels = {}
        for _, r in settings.iterrows():
            shown = [c for c in named if c not in ("params.student", "params.profile")]
            shown += [c for c in off_profile(r, task) if c not in shown]
            if "params.data_subset" in r and pd.notna(r["params.data_subset"]) and "params.data_subset" not in shown:
                shown.append("params.data_subset")  # e.g. 100 of the official 500 training images per class
            labels[r["_setting"]] = ", ".join([str(r["params.student"]), str(r["params.profile"])] +
                                              [f"{c.removeprefix('params.')}={r[c]}" for c in shown if pd.notna(r[c])])
    else:
        scols, vcols, labels = [], [], {}
    header = list(paper.columns)
    for lab in labels.values():
        header += [f"ours {m_label} [{lab}]" for m_label, _ in ours]
        if spec.paired:
            header.append(f"Δ {spec.paired} vs baseline, 95% CI [{lab}]")

    def rows_for(method: str, match) -> list[tuple[str, pd.DataFrame]]:
        """(variant label, runs) of one table row; several when the method ran in several configurations."""
        sel = pool[(pool["params.method"] == method) & match(pool)] if not pool.empty else pool
        if sel.empty:
            return [("", sel)]
        variants = sel.drop_duplicates("_variant")
        named = differing(pool[pool["params.method"] == method].drop_duplicates("_variant"), vcols)
        return [(label_of(v, named), sel[sel["_variant"] == v["_variant"]]) for _, v in variants.iterrows()]

    def cells(method: str, sel: pd.DataFrame) -> list[str]:
        out = []
        for setting in labels:
            s = sel[sel["_setting"] == setting] if not sel.empty else sel
            for _, metric in ours:
                col = f"metrics.{metric}"
                if s.empty:
                    out.append("not run")
                    continue
                if col not in s or s[col].dropna().empty:  # the runs exist; the metric is undefined for them
                    space = s["params.match_space"].iloc[0] if "params.match_space" in s else ""
                    out.append(f"n/a ({len(s)} runs; {space})" if str(space).startswith("undefined") else
                               f"n/a ({len(s)} runs without this metric)")
                    continue
                v = per_seed(s[col], s["params.seed"])
                keep = s.drop_duplicates("params.seed", keep="last")
                out.append(describe(v) + notes.add(list(keep["run_id"])))
            if spec.paired:
                out.append(paired_cell(method, s, pool[pool["_setting"] == setting], spec.paired))
        return out

    lines = [f"## {spec.title}", ""]
    if not pool.empty:  # how strong the teacher was, per setting: a reader must see it before the numbers
        for setting, lab in labels.items():
            runs_s = pool[pool["_setting"] == setting]
            facts = [f"{name} {describe(per_seed(runs_s[col], runs_s['params.seed']))}"
                     for col, name in TEACHER_ACCURACY if col in runs_s and runs_s[col].notna().any()]
            lines.append(f"Teacher [{lab}]: {runs_s['params.teacher_id'].iloc[0] if 'params.teacher_id' in runs_s else '?'}"
                         + (f"; {'; '.join(facts)} (over seeds)" if facts else "; no accuracy recorded"))
        lines.append("")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    body: list[list] = []  # rows of cells; Δ cells stay Paired until their column (one family) is adjusted
    matched = pd.Series(False, index=pool.index) if not pool.empty else None
    for _, row in paper.iterrows():
        method = spec.method_alias.get(row["method"], row["method"])

        def match(df, row=row):
            ok = pd.Series(True, index=df.index)
            for col, (param, scale) in spec.row_params.items():
                if row[col] == "":  # e.g. Table 2's baseline rows name no teacher: no restriction
                    continue
                ok &= _match(df[f"params.{param}"], row[col], scale) if f"params.{param}" in df else False
            return ok
        if not is_method(method):  # a reference row of the paper (chance level): nothing of ours belongs there
            n_ours = len(labels) * (len(ours) + (1 if spec.paired else 0))
            body.append([str(row[c]) for c in paper.columns] + ["—"] * n_ours)
            continue
        for variant, sel in rows_for(method, match):
            if matched is not None and not sel.empty:
                matched.loc[sel.index] = True
            first = [str(row[c]) for c in paper.columns]
            if variant:
                first[0] = f"{first[0]} ({variant})"
            body.append(first + cells(method, sel))
    # rows we ran that the paper's table lacks (a method it did not run, or another grid value)
    extra = pool[~matched] if matched is not None else pool
    if not extra.empty:
        keys = ["params.method"] + [f"params.{p}" for p, _ in spec.row_params.values() if f"params.{p}" in extra]
        for _, first_run in extra.drop_duplicates(keys).iterrows():
            same = (extra[keys].fillna("").astype(str) == first_run[keys].fillna("").astype(str)).all(axis=1)
            method = first_run["params.method"]
            by_row = extra[same]
            for variant, sel in rows_for(method, lambda df, idx=by_row.index: df.index.isin(idx)):
                first = []
                for c in paper.columns:
                    if c == "method":
                        first.append(method + (f" ({variant})" if variant else ""))
                    elif c in spec.row_params:
                        param, scale = spec.row_params[c]
                        val = first_run.get(f"params.{param}")
                        try:
                            first.append(f"{float(val) / scale:g}")
                        except (TypeError, ValueError):
                            first.append(str(val))
                    else:
                        first.append("-")
                body.append(first + cells(method, sel))
    for col in range(len(header)):  # each Δ column (one setting) is one family of comparisons against the baseline
        holm([r[col] for r in body if isinstance(r[col], Paired)])
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in body]
    lines.append("")
    if not labels:
        lines.append(f"Ours: no finished runs of task `{spec.task}`" + (f" in a `--paper {spec.id}` study" if spec.study else "")
                     + " in this store.")
    for n in left_out:
        lines.append(f"Note: {n}.")
    return "\n".join(lines) + "\n"


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


def header_section(runs: pd.DataFrame) -> str:
    if runs.empty:
        return "No finished runs were found: every 'ours' cell below reads 'not run'.\n"
    out = ["| what | values in the runs shown |", "|---|---|"]
    for label, col in [("tasks", "params.task"), ("profiles", "params.profile"), ("students", "params.student"),
                       ("teachers", "params.teacher_id"), ("seeds", "params.seed"), ("data layout", "params.data_layout"),
                       ("train/val/test sizes", None), ("split rule", "params.split_rule"),
                       ("selection rule", "params.selection_rule"), ("device", "params.device_resolved"),
                       ("torch", "params.torch_version")]:
        if col is None:
            vals = sorted({f"{a}/{b}/{c}" for a, b, c in zip(runs.get("params.n_train", []), runs.get("params.n_val", []),
                                                              runs.get("params.n_test", []))})
        else:
            vals = sorted(runs[col].dropna().astype(str).unique()) if col in runs else []
        out.append(f"| {label} | {', '.join(vals)} |")
    for p in AMBIGUITY_PARAMS:
        col = f"params.{p}"
        if col in runs:
            out.append(f"| {p} | {', '.join(sorted(runs[col].dropna().astype(str).unique()))} |")
    return "\n".join(out) + "\n"


def main_setting(runs: pd.DataFrame, task_name: str) -> pd.DataFrame:
    """The non-study runs of a task in its most populated setting (one student, profile, teacher, ...)."""
    spec = TableSpec("", "", "", task_name, [], [])
    pool, _ = select_pool(spec, runs)
    if pool.empty:
        return pool
    pool = pool.assign(_setting=_key(pool, setting_columns(pool, set())))
    return pool[pool["_setting"] == pool["_setting"].value_counts().idxmax()]


def fig_training_curves(runs: pd.DataFrame, uri: str, out: Path) -> list[tuple[str, Path]]:
    """Per task: training loss and the task's selection metric per epoch, one run (lowest seed) per method
    configuration of the task's most populated setting."""
    import mlflow
    client = mlflow.MlflowClient(uri)
    figs = []
    for task_name in sorted(runs["params.task"].unique()) if not runs.empty else []:
        task = task_info(task_name)
        sel = main_setting(runs, task_name)
        if task is None or sel.empty:
            continue
        sel = sel.assign(_variant=_key(sel, variant_columns(sel, set())))
        metrics = ["train_loss", task.selection_metric]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for (method, _), g in sel.groupby(["params.method", "_variant"], sort=True):
            rid = g.sort_values("params.seed")["run_id"].iloc[0]
            for ax, metric in zip(axes, metrics):
                hist = sorted(client.get_metric_history(rid, metric), key=lambda h: h.step)
                ax.plot([h.step for h in hist], [h.value for h in hist], marker="o", label=method)
        first = sel.iloc[0]
        for ax, metric in zip(axes, metrics):
            ax.set_xlabel("epoch"), ax.set_title(metric), ax.legend(fontsize=6)
        fig.suptitle(f"{task_name}: {first['params.student']}, {first['params.profile']} (seed {sel['params.seed'].min()})")
        figs.append((f"Training curves, {task_name} (Fig. 6 analogue)", _save(fig, out / f"fig6_training_curves_{task_name}.png")))
    return figs


def fig_data_fraction(runs: pd.DataFrame, out: Path) -> list[tuple[str, Path]]:
    figs = []
    for task_name in sorted(runs["params.task"].unique()) if not runs.empty else []:
        task = task_info(task_name)
        sel = runs[(runs["params.task"] == task_name) & (runs["tags.xkd.study"] == "")]
        if task is None or sel.empty:
            continue
        sel = sel.assign(_setting=_key(sel, setting_columns(sel, {"params.data_fraction"})))
        sel = sel[sel["_setting"] == sel["_setting"].value_counts().idxmax()]
        fr = pd.to_numeric(sel["params.data_fraction"])
        metric = task.summary_metrics[0][0]
        if fr.nunique() < 2 or f"metrics.{metric}" not in sel:
            continue
        fig, ax = plt.subplots(figsize=(5, 4))
        for method, g in sel.assign(fr=fr).groupby("params.method"):
            m = g.groupby("fr")[f"metrics.{metric}"].mean()
            ax.plot(m.index * 100, m.values, marker="o", label=method)
        ax.set_xlabel("training data (%)"), ax.set_ylabel(metric), ax.legend(fontsize=7)
        ax.set_title(f"{task_name}: {metric} vs data volume")
        figs.append((f"{metric} against data fraction, {task_name} (Fig. 9 analogue)",
                     _save(fig, out / f"fig9_data_fraction_{task_name}.png")))
    return figs


def fig_ablations(runs: pd.DataFrame, out: Path) -> list[Path]:
    paths = []
    for spec in TABLES:
        if not spec.study:
            continue
        col, (param, scale) = next(iter(spec.row_params.items()))
        paper = pd.read_csv(PAPER_DIR / spec.csv)
        pool, _ = select_pool(spec, runs)
        metric = f"metrics.{spec.ours[0][1]}"
        fig, ax = plt.subplots(figsize=(5, 4))
        ax2 = ax.twinx()
        for pc in spec.paper_cols[:2]:
            if "mindcf" in pc:
                continue
            ax2.plot(pd.to_numeric(paper[col]).fillna(0) * scale, pd.to_numeric(paper[pc]), "s--", alpha=0.7,
                     label=f"paper {pc}")
        if not pool.empty and metric in pool and f"params.{param}" in pool:
            pool = pool.assign(_setting=_key(pool, setting_columns(pool, {f"params.{param}"})))
            for _, g in pool.groupby("_setting"):
                x = pd.to_numeric(g[f"params.{param}"])
                stats = [(v, per_seed(h[metric], h["params.seed"])) for v, h in g.assign(x=x).groupby("x")]
                xs = [v for v, _ in stats]
                mean = [s.mean() for _, s in stats]
                sd = [s.std(ddof=1) if len(s) > 1 else 0.0 for _, s in stats]
                first = g.iloc[0]
                ax.errorbar(xs, mean, yerr=sd, marker="o", capsize=3,
                            label=f"ours [{first['params.student']}, {first['params.profile']}]")
        ax.set_xlabel(param.replace("hp.", "")), ax.set_ylabel(f"ours: {spec.ours[0][1]}"), ax2.set_ylabel("paper")
        ax.set_title(spec.title.split(":")[0] + " ablation")
        for a, where in ((ax, "lower left"), (ax2, "lower right")):
            if a.get_legend_handles_labels()[0]:
                a.legend(loc=where, fontsize=7)
        paths.append(_save(fig, out / f"{spec.id}_ablation.png"))
    return paths


FOCUS = {"kd", "fitnet", "ours_feature", "ours_classifier", "ours_feature_quality"}
# (task, swept param, its name, what it means, other params that move with it and so do not split settings)
SWEEPS = [("synthetic", "synth_gamma", "gamma", "share of the teacher's decisive factors the student also sees", ()),
          ("synthetic", "synth_beta", "beta", "student-only decisive factors, as a share of the teacher's", ()),
          ("mfh", "mfh_gamma", "gamma", "MFH's shared share: shared / (shared + both modalities' specific decisive "
           "features)", ("mfh_dim",))]
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
            part, fig = _sweep_table(task, task_name, sel, xs, metric, name, meaning, held, out,
                                     f"{task_name}_{name}{'' if n_fig == 0 else f'_{n_fig + 1}'}.png")
            parts.append(part)
            figs.append(fig)
    return "\n".join(parts), figs


def _sweep_table(task, task_name, sel, xs, metric, name, meaning, held, out, fig_name):
    """One sweep's table (Markdown) and figure (title, path)."""
    title = TASK_TITLES.get(task_name, task_name)
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
    for x in xs:
        at = sel[sel["_x"] == x]
        base = at[at["params.method"] == BASELINE]
        b = per_seed(base[metric], base["params.seed"])
        base_acc.append(b)
        teacher.append(per_seed(base["params.teacher_test_acc"] if "params.teacher_test_acc" in base
                                else pd.Series(np.nan, index=base.index), base["params.seed"]))
        for m in methods:
            g = at[at.index.isin(rows[m].index)]
            gains[m].append(paired_difference(per_seed(g[metric], g["params.seed"]), b) if not b.empty else None)
    head = f"| {name} = | " + " | ".join(f"{x:g}" for x in xs) + " | slope of Δ per unit, 95% CI |"
    lines = [f"### {title}: gain over the baseline against {name} ({meaning})", "",
             f"Setting: {sel['params.profile'].iloc[0]} profile, student {sel['params.student'].iloc[0]}, {held}; "
             f"{task.summary_metrics[0][1]}. Cells: method − baseline over matched seeds (a seed is one draw of "
             "the data and one teacher), raw t-based 95% CI and the paired t-test's p-value adjusted with "
             "Holm's method across every cell of this table (one family); `*`: p_Holm < 0.05. Slope: each "
             f"seed's least-squares slope of its gains against {name} (points of gain per unit of {name}), mean "
             "over seeds with its 95% CI; the slope column is a family of its own.", "", head,
             "|---" * (len(xs) + 2) + "|",
             "| teacher (own test acc.) | " + " | ".join(describe(t) for t in teacher) + " | |",
             "| baseline (test top-1) | " + " | ".join(describe(b) for b in base_acc) + " | |"]
    slopes = {m: slope_cell(sel, rows[m], metric) for m in methods}
    holm([p for m in methods for p in gains[m]])
    holm(list(slopes.values()))
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(str(p) if p else "—" for p in gains[m]) + f" | {slopes[m] or '—'} |")
    part = "\n".join(lines) + "\n"
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    colours = plt.get_cmap("tab20")
    for i, m in enumerate(methods):
        pts = [(x, p) for x, p in zip(xs, gains[m]) if p]
        if not pts:
            continue
        mean = np.array([p.mean for _, p in pts])
        err = np.array([[p.mean - p.lo, p.hi - p.mean] if p.n > 1 else [0, 0] for _, p in pts]).T
        focus = m in FOCUS  # the paper's question: hard alignment (KD, FitNet) against its soft constraints
        ax.errorbar([x + (i - len(methods) / 2) * 0.004 for x, _ in pts], mean, yerr=err, marker="o",
                    ms=4 if focus else 2, capsize=2, lw=2 if focus else 0.8, alpha=1.0 if focus else 0.35,
                    color=colours(i % 20), label=m)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel(name), ax.set_ylabel("test top-1 gain over baseline (points, 95% CI)")
    ax.legend(fontsize=6, ncol=2), ax.set_title(f"{task_name}: gain against {name}, {held} (bold: KD, FitNet, ours)",
                                                fontsize=8)
    for label, series, style in (("teacher (own modality)", teacher, "s--"), ("baseline student", base_acc, "o-")):
        ax2.errorbar(xs, [v.mean() for v in series], yerr=[v.std(ddof=1) if len(v) > 1 else 0 for v in series],
                     fmt=style, capsize=3, label=label)
    ax2.set_xlabel(name), ax2.set_ylabel("test top-1 (%)"), ax2.legend(fontsize=7), ax2.set_title("accuracy")
    return part, (f"{title}: gain over the baseline against {name} ({held})", _save(fig, out / fig_name))


def fig_tsne(runs: pd.DataFrame, uri: str, out: Path) -> Path | None:
    """Teacher embeddings, projection-head outputs and student embeddings of 200 test samples, jointly, from
    the newest run of a method with a projection head (runs that record an `alpha_path`)."""
    import mlflow
    from sklearn.manifold import TSNE
    if runs.empty or "params.alpha_path" not in runs:
        return None
    sel = runs[runs["params.alpha_path"].notna()].sort_values("start_time", ascending=False)
    for rid, method in zip(sel["run_id"], sel["params.method"]):
        try:
            path = mlflow.artifacts.download_artifacts(run_id=rid, artifact_path="features.npz", tracking_uri=uri)
        except Exception:
            continue
        z = np.load(path)
        if "teacher_common" not in z:  # written by an older version of the harness
            continue
        sets = [("teacher E_T", z["teacher_common"], "red"), ("projection head F_T", z["projected_teacher"], "green"),
                ("student F_S", z["student_embedding"], "blue")]
        x = np.concatenate([s[1] / np.linalg.norm(s[1], axis=1, keepdims=True).clip(1e-12) for s in sets])
        emb = TSNE(n_components=2, perplexity=30, init="pca", random_state=0).fit_transform(x)
        group = z["group"]
        shade = 0.35 + 0.65 * (group - group.min()) / max(1, group.max() - group.min())
        fig, ax = plt.subplots(figsize=(6, 5))
        n = len(group)
        for i, (label, _, colour) in enumerate(sets):
            pts = emb[i * n:(i + 1) * n]
            ax.scatter(pts[:, 0], pts[:, 1], s=8, c=colour, alpha=shade, label=label)
        ax.legend(fontsize=8), ax.set_title(f"Fig. 8 analogue: t-SNE of {n} test samples ({method}, run {rid[:8]})")
        return _save(fig, out / "fig8_tsne.png")
    return None


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_report(tracking_uri: str, out: Path, experiment: str | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(tracking_uri, experiment)
    notes = Footnotes()
    parts = ["# Cross-modal distillation benchmark: report", "",
             f"Rebuilt from the MLflow runs at `{tracking_uri}`" + (f", experiment `{experiment}`" if experiment else "")
             + f" ({len(runs)} finished training runs; every param and metric of each in `runs.csv` beside this "
             "file, so each footnoted run id can be looked up). Paper values are copied from the paper. Ours: mean ± sample "
             "std over distinct seeds (n; one seed: `± n/a`), each cell's MLflow run ids in its footnote; one "
             "column block per setting, one row per method configuration. Δ: paired difference against the "
             "baseline over matched seeds of the same setting, with its raw t-based 95% confidence interval and "
             "the paired t-test's p-value adjusted with Holm's method across the comparisons of one column (one "
             "family: every method against the baseline in that setting); `*` marks an adjusted p below 0.05, and "
             "a difference with no spread over its seeds reads `no spread` and never gets a star. Runs of another "
             "resolved precision (bf16/fp32), world size or code version are another setting: they never share a "
             "cell or pair.", "", "## Runs shown", "", header_section(runs)]
    for spec in TABLES:
        parts.append(table_section(spec, runs, notes))
    sweeps, sweep_figs = synthetic_sweeps(runs, out)
    if sweeps:
        parts.append("## Controlled tasks: where the modalities' shared information is known\n\n" + sweeps)
    figs = fig_training_curves(runs, tracking_uri, out) + fig_data_fraction(runs, out) + sweep_figs
    figs.append(("t-SNE of teacher, projected teacher and student features (Fig. 8 analogue)", fig_tsne(runs, tracking_uri, out)))
    figs += [(f"Ablation curve {p.stem.split('_')[0]} (ours, paper points on the right axis)", p) for p in fig_ablations(runs, out)]
    parts.append("## Figures\n")
    for title, path in figs:
        parts.append(f"### {title}\n\n" + (f"![{title}]({path.name})\n" if path else "not run (no runs with the data it needs)\n"))
    parts.append(notes.render())
    export = runs[["run_id"] + sorted(c for c in runs if c.startswith(("params.", "metrics.", "tags.xkd.")))] \
        if not runs.empty else runs
    tmp_csv = out / ".runs.csv.tmp"
    export.to_csv(tmp_csv, index=False)
    tmp_csv.replace(out / "runs.csv")
    report = out / "report.md"
    tmp = out / f".report.md.tmp{hashlib.sha1(str(out).encode()).hexdigest()[:6]}"
    tmp.write_text("\n".join(parts) + "\n")
    tmp.replace(report)
    return report
