"""Loading runs: the finished training runs of an MLflow store as one flat DataFrame, their metric
histories, the export written beside every report (runs.csv), and the registered task behind a run."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd

from benchmark.registry import UsageError

FINISHED = "FINISHED"


def load_runs(tracking_uri: str, experiment: str | None = None, unfinished: bool = False) -> pd.DataFrame:
    """Finished training runs (one per method x seed x config) of the harness, oldest first; with `unfinished`,
    the FAILED, KILLED and RUNNING ones too (column `status`), which a report accounts for (never in a mean)."""
    import mlflow

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///") :]).expanduser().is_file():
        raise UsageError(f"no MLflow store at {tracking_uri} (the file does not exist); nothing to report")
    client = mlflow.MlflowClient(tracking_uri)
    exps = [e for e in client.search_experiments() if (e.name == experiment if experiment else e.name.startswith("xkd-"))]
    if experiment and not exps:
        raise UsageError(
            f"no experiment '{experiment}' in {tracking_uri}; its experiments: "
            + ", ".join(e.name for e in client.search_experiments())
        )
    if not exps:
        return pd.DataFrame()
    mlflow.set_tracking_uri(tracking_uri)
    df = mlflow.search_runs(
        experiment_ids=[e.experiment_id for e in exps],
        output_format="pandas",
        filter_string="tags.`xkd.kind` = 'train'" + ("" if unfinished else f" and attributes.status = '{FINISHED}'"),
    )
    if df.empty:
        return df
    return _normalised(df).sort_values("start_time").reset_index(drop=True)


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    """The finished runs of `runs` (all of them where no `status` was recorded: an export of finished runs)."""
    return runs if "status" not in runs else runs[runs["status"] == FINISHED]


def unfinished(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.iloc[:0] if "status" not in runs else runs[runs["status"] != FINISHED]


def why_not_finished(run: pd.Series) -> str:
    """A few words on why a run has no result: its status, and for a failed run the kind of failure."""
    status = str(run.get("status", "")).upper()
    if status == "RUNNING":
        return "running"
    if status == "KILLED":
        return "killed"
    failure = str(run.get("tags.xkd.failure", "") or "")
    kind = failure.split(":", 1)[0] if failure and failure != "nan" else ""
    return {"Diverged": "diverged", "CheckpointNotWritten": "checkpoint not written"}.get(kind, "failed")


def _normalised(df: pd.DataFrame) -> pd.DataFrame:
    for col in ("tags.xkd.study", "tags.xkd.paper_table"):
        df[col] = df[col].fillna("") if col in df else ""
    from benchmark.config import OWNERS, RunConfig

    for k, v in asdict(RunConfig()).items():  # a field added after some runs were made: they ran with its default
        if f"params.{k}" in df:
            # only where the run's task or teacher reads the field: a plugin task's runs never logged the
            # synthetic task's fields, and must not seem to differ in them from another store's runs
            tasks, teachers = OWNERS.get(k, (None, None))
            reads = (
                pd.Series(True, index=df.index)
                if tasks is None
                else (
                    df.get("params.task", pd.Series("", index=df.index)).isin(tasks)
                    | df.get("params.teacher", pd.Series("", index=df.index)).isin(teachers)
                )
            )
            df.loc[reads, f"params.{k}"] = df.loc[reads, f"params.{k}"].fillna(str(v))
    return df


def read_exports(paths: list[Path]) -> pd.DataFrame:
    """The runs of one or more runs.csv files (the export beside every report) as load_runs gives them: params
    and tags as text, metrics as numbers, in the files' order (each export is oldest first). A run id in two files
    is one run, kept once. A path that is not such an export is refused."""
    frames = []
    for path in map(Path, paths):
        if not path.is_file():
            raise UsageError(f"--runs {path}: no such file")
        try:
            header = pd.read_csv(path, nrows=0).columns
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise UsageError(f"--runs {path}: not a CSV file ({type(e).__name__})") from None
        if "run_id" not in header or "params.task" not in header or "params.method" not in header:
            raise UsageError(
                f"--runs {path}: not a runs.csv export of a report (it needs the columns run_id, params.task, params.method)"
            )
        frames.append(
            pd.read_csv(
                path,
                dtype={c: str for c in header if not c.startswith("metrics.")},
                keep_default_na=False,
                na_values={c: [""] for c in header},
            )
        )
    df = pd.concat(frames, ignore_index=True).drop_duplicates("run_id").reset_index(drop=True)
    if df.empty:
        raise UsageError(f"no runs in {', '.join(map(str, paths))} (a header without rows); nothing to report")
    return _normalised(df)


def require_runs(runs: pd.DataFrame, tracking_uri: str, experiment: str | None) -> None:
    if runs.empty:
        raise UsageError(
            f"no finished training runs in {tracking_uri}"
            + (f", experiment '{experiment}'" if experiment else " (experiments named xkd-*)")
            + "; nothing to report"
        )


def history(tracking_uri: str, run_id: str, metric: str) -> pd.Series:
    """A metric's per-epoch values of one run (index: epoch)."""
    import mlflow

    hist = mlflow.MlflowClient(tracking_uri).get_metric_history(run_id, metric)
    return pd.Series({h.step: h.value for h in sorted(hist, key=lambda h: (h.step, h.timestamp))}, dtype=float)


def export(runs: pd.DataFrame, path: Path) -> None:
    """Every param, metric and xkd tag of each run, and its start time: the store's content a reader needs to check
    each cell. Runs
    that did not finish are in it too, with a `status` column (left out when every run finished)."""
    with_status = "status" in runs and not unfinished(runs).empty
    cols = (
        ["run_id"]
        + (["status"] if with_status else [])
        + (["start_time"] if "start_time" in runs else [])
        + sorted(c for c in runs if c.startswith(("params.", "metrics.", "tags.xkd.")))
    )
    if "start_time" in runs:  # when each run began (UTC, ISO 8601): a protocol's runs must follow its declaration
        runs = runs.assign(
            start_time=pd.to_datetime(runs["start_time"], utc=True, errors="coerce", format="mixed").dt.strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ"
            )
        )
    from benchmark.results import write_atomic

    runs = runs.assign(**{c: runs[c].map(without_machine_path) for c in cols if c.startswith("params.")})
    write_atomic(path, lambda tmp: (runs[cols] if not runs.empty else runs).to_csv(tmp, index=False))


def without_machine_path(value):
    """A param that is an absolute path on the machine that ran it (data_dir, say) as `<local>/` and its last
    part: an export is read on other machines, and the folders of this one are nobody's business there."""
    if isinstance(value, str) and len(value) > 1 and (value.startswith(("/", "~")) or value[1:3] == ":\\"):
        name = value.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
        return f"<local>/{name}"
    return value


def task_info(name: str):
    """The registered task class (its metrics and profiles), or None for a task not registered in this
    process (the entry point loads the plugins; a run of a plugin's task needs `report --plugin`)."""
    from benchmark.registry import TASKS

    return TASKS.get(name) if name in TASKS else None


def is_method(name: str) -> bool:
    from benchmark.registry import METHODS

    return name in METHODS


def lower_is_better(task) -> bool:
    """A task's primary metric goes the way of its selection metric (speaker: EER, lower is better)."""
    return task is not None and task.selection_mode == "min"
