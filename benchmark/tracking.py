"""MLflow tracking: one MLflow run per (task, method, seed, config); params, per-epoch metrics, artifacts."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.interrupts import patiently, process_alive, process_id, uninterrupted
from benchmark.sqlite_store import artifact_root, check_sqlite_store, ensure_sqlite_store, store_lock

SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def safe_uri(url: str) -> str:
    """Storage URL without its password, for logs and MLflow params."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def resolve_uri(cli_uri: str | None) -> str:
    """The MLflow tracking URI, checked before anything is written (an unknown scheme is a usage error)."""
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme and scheme not in SCHEMES:
        from benchmark.registry import UsageError

        raise UsageError(
            f"tracking URI '{uri}': unknown scheme '{scheme}'; use one of {', '.join(SCHEMES)} (e.g. sqlite:///mlflow.db)"
        )
    if scheme == "sqlite":
        path = Path(uri[len("sqlite:///") :]).expanduser().resolve()
        if path.is_dir():
            from benchmark.registry import UsageError

            raise UsageError(
                f"tracking URI '{uri}': {path} is a folder, not a store file (name a file in it, "
                f"e.g. sqlite:///{path / 'mlflow.db'})"
            )
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            from benchmark.registry import UsageError

            raise UsageError(f"tracking URI '{uri}': folder {path.parent} does not exist or is not writable")
        check_sqlite_store(path)
    return uri


class _Uninterrupted:
    """An MLflow client whose every call runs whole (see uninterrupted), and again while the store is locked
    (see patiently; a Ctrl-C acts at once between tries)."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def once(*a, **k):
            with uninterrupted():
                return attr(*a, **k)

        return lambda *a, **k: patiently(once, *a, **k)


def database_log() -> Path:
    """Where MLflow's own reports of database errors go (a file of this process's, made only when one comes)."""
    return Path(tempfile.gettempdir()) / f"xkd-mlflow-{os.getpid()}.log"


def quiet_database_errors() -> None:
    """MLflow logs every database error with its whole traceback (about 45 lines each) before raising it; the
    command then says what happened in one line (a full store's disk, a locked store). Those reports go to
    database_log() instead of the console."""
    import logging

    db = logging.getLogger("mlflow.store.db.utils")
    if not any(getattr(h, "xkd", False) for h in db.handlers):
        handler = logging.FileHandler(database_log(), delay=True)
        handler.xkd = True  # type: ignore[attr-defined]
        db.addHandler(handler)
        db.propagate = False


class Tracker:
    def __init__(self, uri: str, experiment: str):
        import logging

        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        quiet_database_errors()
        self._logged: dict[str, set[tuple[str, int]]] = {}
        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        self.uri = uri
        with store_lock(uri):
            ensure_sqlite_store(uri)
            self.client = _Uninterrupted(mlflow.MlflowClient(uri))
            exp = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                exp.experiment_id if exp else self.client.create_experiment(experiment, artifact_location=artifact_root(uri))
            )

    def close_stale(self, run_key: str, resume: bool, keep: str | None = None) -> None:
        """A RUNNING run of the same run key whose process is gone (killed without a word) is marked KILLED
        before a new run starts; one whose process is alive on this host is a usage error (the same run twice)."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"params.run_key = '{run_key}' and attributes.status = 'RUNNING'"
        )
        for r in runs:
            owner = r.data.tags.get("xkd.process", "")
            alive = process_alive(owner) if owner else False
            if alive and owner == process_id():
                continue  # this process's own run (resumed in the same process)
            if alive:
                from benchmark.registry import UsageError

                raise UsageError(
                    f"run {r.info.run_id} with the same settings is running in process {owner}; wait for it or stop it first"
                )
            if r.info.run_id == keep:
                continue  # the run being resumed
            if alive is None:
                print(
                    f"warning: run {r.info.run_id} with the same settings is RUNNING on another host ({owner}); left as it is",
                    flush=True,
                )
                continue
            self.client.set_tag(r.info.run_id, "xkd.failure", "its process ended without a word (found stale)")
            self.client.set_terminated(r.info.run_id, status="KILLED")
            print(
                f"run {r.info.run_id} of these settings was left RUNNING by a process that died: marked KILLED"
                + ("" if resume else " (rerun with --resume to continue from its checkpoint)"),
                flush=True,
            )

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)

    def start(self, run_name: str, tags: dict[str, str], run_id: str | None = None, parent_run_id: str | None = None) -> str:
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, "xkd.process", process_id())
            # what the interrupted process logged after its last checkpoint (its epoch's metrics, when the store
            # or a disk failed before the checkpoint) is not logged twice by the resumed epochs
            self._logged[run_id] = {
                (k, h.step) for k in self.client.get_run(run_id).data.metrics for h in self.client.get_metric_history(run_id, k)
            }
            return run_id
        tags = {**tags, "xkd.process": process_id()}
        if parent_run_id:
            tags = {**tags, "mlflow.parentRunId": parent_run_id}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        seen = self._logged.get(run_id, set())
        items = [
            Metric(k, float(v), ts, step)
            for k, v in metrics.items()
            if v is not None and not math.isnan(float(v)) and (k, step) not in seen
        ]
        if items:
            self.client.log_batch(run_id, metrics=items)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_dict(self, run_id: str, obj: Any, name: str) -> None:
        self.client.log_text(run_id, json.dumps(obj, indent=2, default=str), name)

    def log_torch(self, run_id: str, obj: Any, name: str) -> None:
        import torch

        with tempfile.TemporaryDirectory() as d:
            torch.save(obj, Path(d) / name)
            self.client.log_artifact(run_id, str(Path(d) / name))

    def log_arrays(self, run_id: str, arrays: dict[str, np.ndarray], name: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / name
            np.savez_compressed(path, allow_pickle=False, **arrays)
            self.client.log_artifact(run_id, str(path))

    def log_dataset(self, run_id: str, name: str, digest: str, source: str, facts: dict[str, Any]) -> None:
        """The data a run used, as an MLflow dataset input (its digest lets the UI group runs by data)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(
            name=name,
            digest=digest[:36],
            source_type="local",
            source=json.dumps({"uri": source}),
            profile=json.dumps(facts, default=str),
        )
        inputs = [DatasetInput(ds, tags=[InputTag("mlflow.data.context", "training")])]
        try:
            self.client.log_inputs(run_id, datasets=inputs)
        except Exception as e:  # noqa: BLE001 - two workers logged the same dataset at once: the server stored it
            if not any(w in str(e) for w in ("UniqueViolation", "UNIQUE constraint", "dataset_pk")):
                raise
            self.client.log_inputs(run_id, datasets=inputs)  # once more: it finds the dataset and links this run

    def log_model(self, run_id: str, model, class_names: list[str], weights: str) -> str:
        """The trained student as an MLflow PyTorch model (load it with mlflow.pytorch.load_model(uri)); the
        class names travel in its metadata. Returns the model URI, also set as the run tag xkd.model_uri."""
        import mlflow.pytorch
        import torch

        with uninterrupted(), self.mlflow.start_run(run_id=run_id, experiment_id=self.experiment_id):
            info = mlflow.pytorch.log_model(
                model,
                name="student",
                serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__}"],
                metadata={"class_names": list(class_names), "weights": weights},
            )
        self.client.update_run(run_id, status="RUNNING")  # the fluent context ended it; end() decides
        self.client.set_tag(run_id, "xkd.model_uri", info.model_uri)
        return info.model_uri

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)


class NullTracker:
    """What ranks other than 0 hold under torchrun: every call does nothing (rank 0 logs the run)."""

    uri = ""

    def __getattr__(self, name):
        return lambda *a, **k: ""
