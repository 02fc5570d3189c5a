"""`study`: an Optuna study over one method (a --grid, the paper's --paper ablation, or TPE)."""
from __future__ import annotations

from benchmark.commands.common import common_run_args
from benchmark.registry import METHODS, UsageError


def cmd_study(args) -> int:
    from benchmark import distributed
    from studies.command import cmd_study as study
    if distributed.launched():
        raise UsageError("study does not run under torchrun; scale a study out with --workers N on each machine "
                         "sharing one --storage (each trial may itself be a torchrun `run`)")
    return study(args)


def add(sub) -> None:
    from benchmark.manifest import known
    p = sub.add_parser("study", help="Optuna study of one method: a grid (--grid / --paper tableN) or TPE over its "
                       "search space")
    common_run_args(p, methods=False)
    p.add_argument("--method", choices=known(METHODS), help="the method studied (--paper sets it)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a hyperparameter and its values (repeatable: the grid is their product)")
    p.add_argument("--paper", choices=["table5", "table6", "table10", "table11", "table12"],
                   help="the paper's ablation (its task, method, grid and fixed values)")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///studies.db; postgresql://... for many workers)")
    p.add_argument("--study-name", dest="study_name", help="default: task-method-profile-<hash of the definition>")
    p.add_argument("--n-trials", dest="n_trials", type=int, help="TPE trials per worker (default 10)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--heartbeat", type=int, default=30, metavar="S",
                   help="seconds between a worker's heartbeats; a trial silent for 2 x S is re-queued (default 30)")
    p.add_argument("--join", action="store_true", help="join an existing study as a worker (other machines)")
    p.add_argument("--create-only", dest="create_only", action="store_true", help="create the study and exit")
    p.add_argument("--tracking-uri", dest="tracking_uri", help="MLflow URI (default $MLFLOW_TRACKING_URI or "
                   "sqlite:///mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default xkd-<task>)")
    p.add_argument("--out", help="checkpoint folder (default runs/study-<name>)")
    p.set_defaults(fn=cmd_study, interrupted="the study's current trial ended; rerun the same command to go on "
                   "(finished trials are kept in --storage)")
