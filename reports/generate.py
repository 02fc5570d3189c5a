"""The report: what the user's runs show, first, then the paper's tables that have runs. Its parts live by
concern: loading (reports/runs.py), grouping (reports/grouping.py), the leaderboard (reports/leaderboard.py),
studies (reports/studies.py), negative controls (reports/controls.py), teacher instances (reports/teachers.py),
the controlled tasks' sweeps (reports/sweeps.py), the paper's tables
(reports/paper.py), figures (reports/figures.py) and `--compare` (reports/compare.py).

Written to the output folder: report.md, its PNGs, report.csv (the leaderboards as numbers: mean, std, n,
CI bounds, p, p_Holm per method configuration), studies.csv (every study value as numbers), controls.csv and
teachers.csv (the control and teacher-instance tables as numbers, when there are such runs) and runs.csv
(every param and metric of each run, so each footnoted run id can be looked up without the store)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from reports import figures
from reports.controls import control_tables, split_controls
from reports.grouping import configurations, off_profile, setting_labels, with_keys
from reports.leaderboard import leaderboards
from reports.markdown import Footnotes
from reports.paper import fig_ablations, has_runs, header_section, select_pool, table_section
from reports.runs import export, finished, history, load_runs, read_exports, require_runs, task_info, unfinished, why_not_finished
from reports.specs import TABLES, TableSpec
from reports.studies import studies, study_summary
from reports.sweeps import synthetic_sweeps
from reports.teachers import teacher_instance_tables, teacher_summary

INTRO = (
    "Cells: mean ± sample std over distinct seeds (n; one seed: `± n/a`), each cell's MLflow run ids in its "
    "footnote. Δ: the paired difference against the baseline over matched seeds of the same setting, its raw "
    "t-based 95% CI and the paired t-test's p-value adjusted with Holm's method over one table (one family); "
    "`*` marks p_Holm < 0.05, and a difference with no spread over its seeds reads `no spread`. A setting is "
    "everything in a run's configuration except the method, its hyperparameters and the seed; runs of another "
    "precision, world size or code version are another setting and never pair."
)


def main_setting(runs: pd.DataFrame, task_name: str, task) -> tuple[pd.DataFrame, str]:
    """The non-study runs of a task in its most populated setting (one student, profile, teacher, ...), and that
    setting's label named against the task's other settings (so that a sweep's figure says which point it
    shows). Where the task names the setting its figures show (Task.main_setting: the synthetic sweep's gamma = 1), the most
    populated of the settings that have it (a sweep's settings are equally populated, and its first, gamma = 0,
    is the one where nothing can transfer)."""
    from benchmark.protocol import same_value

    pool, _ = select_pool(TableSpec("", "", "", task_name, [], []), runs)
    if pool.empty:
        return pool, ""
    pool = with_keys(pool)
    sel = pool
    wanted = getattr(task, "main_setting", ())
    if wanted:
        has = pool.apply(lambda r: all(same_value(r.get(f"params.{k}"), v) for k, v in wanted), axis=1)
        sel = pool[has] if has.any() else pool
    key = sel["_setting"].value_counts().idxmax()
    return sel[sel["_setting"] == key], setting_labels(pool, task)[key]


CAPTIONS = {  # by the figure file's name: what to read from it
    "curves_": "How to read it: one row of panels per method configuration: its task loss per epoch (the task's own "
    "term alone, so that methods share one scale; each method's own loss terms per epoch are in runs.csv "
    "as metrics.term_*) and its validation metric, mean over seeds with the min-max band. A loss that "
    "stays flat is a method that did not train (the summary's checks name such runs).",
    "tsne": "How to read it: the marker is the space (open squares: the frozen teacher's E_T; open triangles: the "
    "projection head's F_T; dots: the student's F_S), the colour the class. Where a class's dots lie with "
    "its triangles, the student learned the teacher's geometry for it; the squares show where the teacher "
    "itself put the class. One run only (named in the heading): not a statistic.",
}


def caption(name: str) -> str:
    return next((f"\n{text}\n" for prefix, text in CAPTIONS.items() if name.startswith(prefix)), "")


def fig_training_curves(runs: pd.DataFrame, uri: str, out: Path) -> list[tuple[str, Path]]:
    """Per task (its most populated setting): the task's own loss term (not the methods' summed, weighted
    losses) and the selection metric per epoch, mean over seeds with a min-max band, per configuration."""
    figs = []
    for task_name in sorted(runs["params.task"].unique()):
        task = task_info(task_name)
        if task is None:
            continue
        sel, label = main_setting(runs, task_name, task)
        if sel.empty:
            continue
        loss = "term_ce" if "metrics.term_ce" in sel and sel["metrics.term_ce"].notna().any() else "train_loss"
        panels = [(m, figures.axis_label(m)) for m in (loss, task.selection_metric)]
        series = {
            name: {
                m: [history(uri, rid, m) for rid in g.drop_duplicates("params.seed", keep="last")["run_id"]] for m, _ in panels
            }
            for name, _, g in configurations(sel)
        }
        heading = f"Training curves, {task_name}: {label} (one panel per method, mean over seeds, band: min-max)"
        figs.append((heading, figures.curves(series, panels, heading, out / f"curves_{task_name}.png")))
    return figs


def fig_data_fraction(runs: pd.DataFrame, out: Path) -> list[tuple[str, Path]]:
    """The primary metric against the training data fraction (Fig. 9 analogue), mean over seeds."""
    from reports.grouping import key_of, setting_columns

    figs = []
    for task_name in sorted(runs["params.task"].unique()):
        task = task_info(task_name)
        sel = runs[(runs["params.task"] == task_name) & (runs["tags.xkd.study"] == "")]
        if task is None or sel.empty:
            continue
        sel = sel.assign(_setting=key_of(sel, setting_columns(sel, {"params.data_fraction"})))
        sel = sel[sel["_setting"] == sel["_setting"].value_counts().idxmax()]
        fr = pd.to_numeric(sel["params.data_fraction"])
        metric = task.summary_metrics[0][0]
        if fr.nunique() < 2 or f"metrics.{metric}" not in sel:
            continue
        fig, ax = figures.plt.subplots(figsize=(6, 4))
        st = figures.styles(list(sel["params.method"].unique()))
        for method, g in sel.assign(fr=fr).groupby("params.method"):
            m = g.groupby("fr")[f"metrics.{metric}"].mean()
            ax.plot(m.index * 100, m.values, label=method, **st[method])
        ax.set_xlabel("training data (%)"), ax.set_ylabel(f"{metric} (mean over seeds)"), ax.legend(fontsize=7)
        first = sel.iloc[0]
        heading = f"{task_name}: {metric} against data volume ({first['params.student']}, {first['params.profile']})"
        figures.title(fig, heading)
        figs.append((heading + " (Fig. 9 analogue)", figures.save(fig, out / f"data_fraction_{task_name}.png")))
    return figs


def fig_tsne(runs: pd.DataFrame, uri: str, out: Path) -> list[tuple[str, Path]]:
    """Teacher embeddings, projection-head outputs and student embeddings of the same test samples (Fig. 8
    analogue), from the newest run of a method with a projection head (a run that records `alpha_path`)."""
    import mlflow

    if "params.alpha_path" not in runs:
        return []
    sel = runs[runs["params.alpha_path"].notna()].sort_values("start_time", ascending=False)
    for _, r in sel.iterrows():
        try:
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bar in the report's output
            path = mlflow.artifacts.download_artifacts(run_id=r["run_id"], artifact_path="features.npz", tracking_uri=uri)
        except Exception:  # noqa: BLE001 - a run without the artifact: try the next one
            continue
        z = dict(np.load(path))
        if "teacher_common" not in z:  # written by an older version of the harness
            continue
        dev = [f"{c.removeprefix('params.')}={r[c]}" for c in off_profile(r, task_info(r["params.task"]))]
        heading = (
            f"t-SNE of {len(z['label'])} test samples: teacher E_T, projection head F_T, student F_S; "
            f"{r['params.task']}, {r['params.method']}, {r['params.student']}, {r['params.profile']}"
            + (f", {', '.join(dev)}" if dev else "")
            + f", seed {r['params.seed']} (run {r['run_id'][:8]}: the "
            "newest run of a method with a projection head, the only kind that has an F_T to show)"
        )
        return [
            (
                heading + " (Fig. 8 analogue)",
                figures.tsne(z, list(z["class_names"]) if "class_names" in z else None, heading, out / "tsne.png"),
            )
        ]
    return []


def paper_tables(runs: pd.DataFrame, notes: Footnotes, with_paper: bool) -> tuple[str, list[str]]:
    """The paper's tables with runs (every one with `with_paper`), and the ids of those left out."""
    shown, skipped = [], []
    for spec in TABLES:
        if with_paper or has_runs(spec, runs):
            shown.append(table_section(spec, runs, notes))
        else:
            skipped.append(spec.title.split(":")[0])
    return "\n".join(shown), skipped


def build_report(
    tracking_uri: str | None, out: Path, experiment: str | None = None, with_paper: bool = False, files: list[Path] | None = None
) -> Path:
    """The report of a store's runs, or (files) of runs.csv exports: the same tables, computed from what a
    reader of the repository has; the figures that need a store's metric histories or artifacts (training
    curves, t-SNE) are left out, and the report says so."""
    if files:
        every_run = read_exports(files)
        source = "the runs.csv export(s) " + ", ".join(f"`{f}`" for f in files)
        require_runs(finished(every_run), source.replace("`", ""), None)
    else:
        every_run = load_runs(tracking_uri, experiment, unfinished=True)
        require_runs(finished(every_run), tracking_uri, experiment)  # nothing is written without finished runs
        source = f"the MLflow runs at `{store_name(tracking_uri)}`" + (f", experiment `{experiment}`" if experiment else "")
    if "params.plugins" in every_run:  # a plugin task's metrics and labels come from its class: load it
        from benchmark.plugins import load_recorded

        load_recorded(every_run["params.plugins"].dropna().astype(str).str.split(",").explode(), "the runs'")
    # failed, killed and running runs: in no mean, but each table accounts for them and counts their comparisons
    everything, not_done = finished(every_run), split_controls(unfinished(every_run))[0]
    notes = Footnotes()
    runs, _ = split_controls(everything)  # runs with a control teacher appear in their own section only
    if runs.empty:
        from benchmark.registry import UsageError

        raise UsageError(
            f"every finished run in {source.replace('`', '')} used a control teacher (teacher_control); a report "
            "compares them with runs of the real teacher (the baseline at least): run those first"
        )
    out.mkdir(parents=True, exist_ok=True)
    board, board_records, forest_figs, summary = leaderboards(runs, out, notes, not_done)
    control_md, control_records = control_tables(everything, notes)
    teacher_md, teacher_records = teacher_instance_tables(runs, notes)
    study_md, study_records, _ = studies(runs, out, notes)
    sweeps, sweep_figs = synthetic_sweeps(runs, out)
    paper_md, skipped = paper_tables(runs, notes, with_paper)
    figs = fig_data_fraction(runs, out)
    if not files:  # metric histories and artifacts live in the store
        figs = fig_training_curves(runs, tracking_uri, out) + figs + fig_tsne(runs, tracking_uri, out)
    figs += fig_ablations(runs, out, with_paper)
    parts = [
        "# Cross-modal distillation benchmark: report",
        "",
        f"Rebuilt from {source}: {len(everything)} finished training runs"
        + (f" ({len(everything) - len(runs)} of them with a control teacher)" if len(everything) > len(runs) else "")
        + (
            f", and {len(every_run) - len(everything)} that did not finish ({_statuses(every_run)}; each "
            "leaderboard names its own)"
            if len(every_run) > len(everything)
            else ""
        )
        + f" of {runs['params.task'].nunique()} task(s) "
        f"({', '.join(sorted(runs['params.task'].unique()))}). The numbers behind every table: `report.csv` "
        "(leaderboards), `studies.csv` (studies, when the store holds any) and `runs.csv` (every param and metric "
        "of each run).",
        "",
        "## Summary",
        "",
        "Per task and setting: a protocol's confirmatory comparison (tested alone; only where every run matches a "
        "committed protocol), the exploratory comparisons "
        "with the baseline after Holm's correction, what the table could detect, and the forest plot of every Δ. "
        "Δ is in percentage points of the primary metric.",
        "",
        summary or "",
        teacher_summary(teacher_records),
        study_summary(study_records),
    ]
    if board.strip():
        parts += [
            "## Leaderboards",
            "",
            INTRO,
            "",
            "Per task and setting (the most populated first), sorted by the primary metric.",
            "",
            board,
        ]
    else:
        parts += ["## Leaderboards", "", "No runs outside studies: every run of this store belongs to a study (below).", ""]
    if control_md:
        parts += ["## Negative controls: knowledge of the teacher, or regularisation?", "", control_md]
    if teacher_md:
        parts += ["## Teacher instances: a gain of the recipe, or of one trained teacher?", "", teacher_md]
    if study_md:
        parts += ["## Studies", "", study_md]
    if sweeps:
        parts += ["## Controlled tasks: where the modalities' shared information is known", "", sweeps]
    if figs or files:
        parts.append("## Figures\n")
        parts += [f"### {t}\n\n![{t}]({p.name})\n" + caption(p.name) for t, p in figs]
    if files:
        parts += [
            "Training curves and the t-SNE figure are not in a report rebuilt from runs.csv files: they need "
            "the metric histories and artifacts of an MLflow store.",
            "",
        ]
    parts += [
        "## The paper's tables",
        "",
        "The paper's numbers (copied from the paper) beside ours, for the tables with runs in this store"
        + (
            " and every other (`--with-paper`)."
            if with_paper
            else (
                f"; not shown, for want of runs (rebuild with `--with-paper` to see them): {', '.join(skipped)}."
                if skipped
                else "."
            )
        ),
        "",
        paper_md,
    ]
    parts += ["## Appendix: what the runs are", "", header_section(runs), notes.render()]
    _write(out / "report.csv", pd.DataFrame(board_records).to_csv(index=False))
    if study_records:
        _write(out / "studies.csv", pd.DataFrame(study_records).to_csv(index=False))
    if control_records:
        _write(out / "controls.csv", pd.DataFrame(control_records).to_csv(index=False))
    if teacher_records:
        _write(out / "teachers.csv", pd.DataFrame(teacher_records).to_csv(index=False))
    export(every_run, out / "runs.csv")
    report = out / "report.md"
    _write(report, "\n".join(parts) + "\n")
    return report


def store_name(uri: str) -> str:
    """A store as a committed report may name it: a sqlite file by its name alone (the folder is the building
    machine's), a server without its password."""
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).name}"
    from benchmark.tracking import safe_uri

    return safe_uri(uri)


def _statuses(runs: pd.DataFrame) -> str:
    counts = unfinished(runs).apply(why_not_finished, axis=1).value_counts()
    return ", ".join(f"{n} {why}" for why, n in counts.sort_index().items())


def _write(path: Path, text: str) -> None:
    from benchmark.results import write_atomic

    write_atomic(path, text)
