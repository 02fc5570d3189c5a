"""`study`: an Optuna study over one method (a --grid, the paper's --paper ablation, or TPE); the Optuna
machinery is studies/runner.py (trials), studies/storage.py (grid queue, heartbeats) and studies/workers.py.

A study is defined by everything that changes what its trials compute: task, method, the resolved run
configuration (profile values, student, teacher, data fraction, every --set), the seeds of each trial,
the values the study fixes and its grid. The definition is stored with the study and a short hash of it
is part of the default name, so a study with another student or another fixed value is another study,
and joining or resuming a study whose stored definition differs fails with one line.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmark.commands.common import common_run_args
from benchmark.config import defining_fields, definition_hash
from benchmark.fanout import without
from benchmark.registry import METHODS, UsageError
from studies.paper import PAPER_STUDIES


def add(sub) -> None:
    from benchmark.manifest import known

    p = sub.add_parser("study", help="Optuna study of one method: a grid (--grid / --paper tableN) or TPE over its search space")
    common_run_args(p, methods=False)
    p.add_argument("--method", choices=known(METHODS), help="the method studied (--paper sets it)")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a hyperparameter and its values (repeatable: the grid is their product)",
    )
    p.add_argument(
        "--paper",
        choices=["table5", "table6", "table10", "table11", "table12"],
        help="the paper's ablation (its task, method, grid and fixed values)",
    )
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///studies.db; postgresql://... for many workers)")
    p.add_argument("--study-name", dest="study_name", help="default: task-method-profile-<hash of the definition>")
    p.add_argument("--n-trials", dest="n_trials", type=int, help="TPE trials per worker (default 10)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        metavar="S",
        help="seconds between a worker's heartbeats; a trial silent for 2 x S is re-queued (default 30)",
    )
    p.add_argument("--join", action="store_true", help="join an existing study as a worker (other machines)")
    p.add_argument("--create-only", dest="create_only", action="store_true", help="create the study and exit")
    p.add_argument("--tracking-uri", dest="tracking_uri", help="MLflow URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default xkd-<task>)")
    p.add_argument("--out", help="checkpoint folder (default runs/study-<name>)")
    p.set_defaults(
        fn=cmd_study,
        interrupted="the study's current trial ended; rerun the same command to go on (finished trials are kept in --storage)",
    )


def study_definition(
    cfg, method: str, hp: dict[str, Any], seeds: int, grid: dict | None, paper: str | None, fixed: dict[str, Any]
) -> dict[str, Any]:
    config = {k: getattr(cfg, k) for k in defining_fields() if hasattr(cfg, k)}  # another task's fields: absent
    return {
        "paper_table": paper or "",
        "method": method,
        "config": config,
        "hparams": dict(sorted(hp.items())),
        "fixed": dict(sorted(fixed.items())),
        "first_seed": cfg.seed,
        "seeds": seeds,
        "grid": grid or {},
        "search": "grid" if grid else "tpe",
    }


def apply_fixed(args, spec: dict) -> dict[str, Any]:
    """The paper study's fixed values become --set values; a user --set that contradicts one is refused."""
    fixed = dict(spec.get("fixed", {}))
    given = {}
    for item in args.set:
        k, _, v = item.partition("=")
        given[k.strip()] = v.strip()
    for k, v in fixed.items():
        if k in given and given[k] != str(v):
            try:
                same = float(given[k]) == float(v)
            except ValueError:
                same = False
            if not same:
                raise UsageError(
                    f"--paper {args.paper} fixes {k}={v}; remove --set {k}={given[k]} (or run your own --grid study)"
                )
        if k not in given:
            args.set.append(f"{k}={v}")
    return fixed


def alpha_warning(task, cfg, grid: dict | None, method: str, hp_obj, data) -> str | None:
    """The paper's alpha weights the frozen E_T; with d_T != d_S that path is a learned map instead."""

    from benchmark.teachers import teacher_class

    varies_alpha = "alpha" in (grid or {}) or (not grid and "alpha" in METHODS.get(method).tunable(hp_obj))
    if not varies_alpha:
        return None
    from benchmark.nets import student_builder

    d_s = student_builder(cfg.student)(data.num_classes).embed_dim
    d_t = getattr(teacher_class(cfg.teacher), "dim", None)
    if d_t is None or d_t == d_s:
        return None
    return (
        f"warning: this study varies alpha, but teacher '{cfg.teacher}' is {d_t}-d and student '{cfg.student}' is "
        f"{d_s}-d: the alpha path of the projection head is a learned {d_t}->{d_s} linear map, not the frozen "
        f"teacher embedding the paper weights (runs record alpha_path)"
    )


def cmd_study(args) -> int:
    from benchmark import distributed
    from benchmark.method import hparam_fields
    from benchmark.resolve import resolve
    from benchmark.teacher_cache import TeacherCache
    from benchmark.tracking import Tracker, resolve_uri, safe_uri
    from benchmark.trainer import resolve_hparams
    from studies import runner, workers
    from studies.storage import check_definition, check_storage, create_study, load_study, requeue_unfinished

    if distributed.launched():
        raise UsageError(
            "study does not run under torchrun; scale a study out with --workers N on each machine "
            "sharing one --storage (each trial may itself be a torchrun `run`)"
        )
    fixed: dict[str, Any] = {}
    if args.heartbeat < 1:
        raise UsageError(f"--heartbeat {args.heartbeat}: must be at least 1 second")
    if args.paper:
        if args.paper not in PAPER_STUDIES:
            raise UsageError(f"unknown --paper '{args.paper}'; known: {', '.join(PAPER_STUDIES)}")
        if args.grid:
            raise UsageError(f"--paper {args.paper} has its own grid; drop --grid")
        spec = PAPER_STUDIES[args.paper]
        args.task, args.method = spec["task"], spec["method"]
        if args.profile == "paper" and not args.student:
            args.student = spec["paper_student"]
        fixed = apply_fixed(args, spec)
        grid = spec["grid"]
    else:
        if not args.method:
            raise UsageError("study needs --method M (or --paper tableN)")
        METHODS.get(args.method)
        grid = runner.parse_grid(args.grid, hparam_fields(METHODS.get(args.method))) or None
    args.methods = args.method
    task, _, hp, cfg, data = resolve(args)
    _, hp_obj = resolve_hparams(args.method, task, cfg, hp)
    definition = study_definition(cfg, args.method, asdict(hp_obj), args.seeds, grid, args.paper, fixed)
    digest = definition_hash(definition)
    base = f"{args.paper}-{cfg.profile}" if args.paper else f"{cfg.task}-{args.method}-{cfg.profile}"
    name = args.study_name or f"{base}-{digest}"
    storage = args.storage or f"sqlite:///{Path.cwd() / 'studies.db'}"
    check_storage(storage)
    warning = alpha_warning(task, cfg, grid, args.method, hp_obj, data)
    if warning and not args.join:
        print(warning, file=sys.stderr)
    if args.join:
        check_definition(name, storage, definition)
    tracker = Tracker(resolve_uri(args.tracking_uri), args.experiment or f"xkd-{cfg.task}")
    direction = "maximize" if task.selection_mode == "max" else "minimize"
    if not args.join:
        tags = {
            "task": cfg.task,
            "method": args.method,
            "profile": cfg.profile,
            "student": cfg.student,
            "teacher": cfg.teacher,
            "paper_table": args.paper or "",
            "definition_hash": digest,
            **({"alpha_warning": warning} if warning else {}),
        }
        create_study(name, storage, direction, grid, tracker, tags, definition, fixed)
        n = len(list(itertools.product(*grid.values()))) if grid else 0
        print(f"study '{name}' ready in {safe_uri(storage)}" + (f" ({n} grid points)" if grid else ""))
    if args.create_only:
        return 0
    recovered: list[str] = []
    if grid and not args.join:  # a rerun of the command finishes what an interrupt left: its points again
        import optuna

        recovered += requeue_unfinished(optuna.load_study(study_name=name, storage=storage))
        for line in recovered:
            print(line, flush=True)
    if args.workers > 1 and not args.join:
        argv = [a for a in args.argv if a != "--create-only"]
        study, storage_obj = load_study(name, storage, grid, args.heartbeat, runner.stale_trial_handler(tracker))

        def pending() -> int:
            import optuna

            return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))) if grid else 0

        lost = workers.spawn_workers(
            without(without(argv, "--workers"), "--study-name") + ["--study-name", name, "--storage", storage],
            args.workers,
            lambda pid, code: workers.recover_worker(study, storage_obj, tracker, pid, code),
            pending,
        )
        for line in lost:
            print(line, flush=True)
        recovered += lost
    else:
        tables = task.teacher_tables(cfg, data, TeacherCache(args.cache_dir))
        study, storage_obj = load_study(name, storage, grid, args.heartbeat, runner.stale_trial_handler(tracker))
        objective = runner.Objective(
            cfg,
            task,
            data,
            tables,
            args.method,
            hp,
            tracker,
            Path(args.out or f"runs/study-{name}"),
            args.seeds,
            grid,
            prune=grid is None,
            fixed=fixed,
        )
        runner.work(study, storage_obj, objective, args.n_trials, args.heartbeat)
    import optuna

    if grid and not args.join:  # points that live workers of another command still run: not lost, waited for
        watched, _ = load_study(name, storage, grid, args.heartbeat, runner.stale_trial_handler(tracker))
        workers.wait_for_other_workers(watched, lambda: _unfinished(watched), lambda line: print(line, flush=True))
    study = optuna.load_study(study_name=name, storage=storage)
    runner.end_parent_if_done(study, tracker)  # whichever worker ends last ends the parent run
    if not args.join:
        df = study.trials_dataframe(attrs=("number", "params", "value", "state", "user_attrs"))
        df = df[[c for c in df if not c.startswith("user_attrs_") or c == "user_attrs_fail_reason"]]
        print(df.to_markdown(index=False))
    if recovered and not args.join:
        print(
            f"recovered: {len(recovered)} interrupted or lost trial(s) queued again and run in this command "
            f"({'; '.join(recovered)})",
            flush=True,
        )
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL and "fail_reason" in t.user_attrs]
    if failed:
        print(
            f"error: {len(failed)} of {len(study.trials)} trials failed: "
            + "; ".join(f"trial {t.number}: {t.user_attrs['fail_reason']}" for t in failed),
            file=sys.stderr,
        )
        return 3
    if grid and not args.join:
        left = _unfinished(study)
        if left:
            print(
                f"error: {len(left)} grid point(s) did not complete (trials "
                f"{', '.join(str(t.number) for t in left)}); rerun the same command to run them",
                file=sys.stderr,
            )
            return 1
    return 0


def _unfinished(study) -> list:
    """The trials of grid points that have no COMPLETE trial."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    done = [u.params for u in trials if u.state == optuna.trial.TrialState.COMPLETE]
    return [t for t in trials if t.state != optuna.trial.TrialState.COMPLETE and t.params not in done]
