"""`eval`: a trained run's weights evaluated on its task's test split, printing the same metrics as `run`
(top-1, matching, the task's own). The run is named by its MLflow run id (its experiment.toml artifact gives
task, method, seed and every setting) or by an experiment file. The weights: the last epoch's, from the
checkpoint `run` keeps (runs/<task>-<profile>/checkpoints/<method>-seed<seed>-<run key>.pt, or --checkpoint),
or, with --model-uri, the logged MLflow model (a run with `--set log_model=true`: the best-validation
epoch's student, and the method's state logged beside it)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from benchmark.commands.common import common_run_args
from benchmark.registry import UsageError
from benchmark.resolve import apply_config, resolve


def cmd_eval(args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        if args.model_uri:
            args.run_id = args.run_id or _run_of(args.model_uri, args)
        if args.run_id:
            if args.config:
                raise UsageError("give --run-id or --config, not both")
            args.config = _experiment_file(args, Path(tmp))
            from benchmark import experiment
            from benchmark.plugins import load_recorded

            load_recorded(experiment.read(args.config).get("plugins", []), f"run {args.run_id}'s")
        if not args.config and not args.checkpoint:
            raise UsageError(
                "eval needs --run-id RUN or --model-uri URI (an MLflow run of `run`), or --config FILE.toml with --checkpoint"
            )
        apply_config(args)
        task, methods, hp, cfg, data = resolve(args)
    if len(methods) != 1:
        raise UsageError(f"eval evaluates one method's run; got {', '.join(methods)}")
    from benchmark.checkpoints import load_checkpoint, run_key
    from benchmark.teacher_cache import TeacherCache
    from benchmark.trainer import Context

    cache = TeacherCache(args.cache_dir)
    tables = task.teacher_tables(cfg, data, cache)
    data, tables = task.data_for_seed(cfg, data, tables, cache)
    ctx = Context(cfg, task, data, tables, methods[0], hp)
    if args.model_uri:
        return _eval_model(args, ctx, task, methods[0], cfg)
    path = (
        Path(args.checkpoint)
        if args.checkpoint
        else (
            Path(args.out or f"runs/{cfg.task}-{cfg.profile}")
            / "checkpoints"
            / f"{methods[0]}-seed{cfg.seed}-{run_key(cfg, methods[0], ctx.hparams)}.pt"
        )
    )
    ck = load_checkpoint(path, ctx.device) if path.exists() else None
    if ck is None or "weights" not in ck and "state" not in ck:
        raise UsageError(
            f"no trained weights at {path} (a run keeps them in --out/checkpoints; a run made before "
            "this version, or with another --out, needs --checkpoint)"
        )
    _check_checkpoint(ck, path, methods[0], cfg.seed, args.run_id)
    w = ck.get("weights") or ck["state"]
    try:
        ctx.student.load_state_dict(w["student"]), ctx.method.load_state_dict(w["method"])
        ctx.task_loss.load_state_dict(w["task_loss"])
    except (RuntimeError, KeyError) as e:
        raise UsageError(
            f"checkpoint {path} does not fit {methods[0]} on {cfg.task} with student {cfg.student}: {str(e).splitlines()[0]}"
        ) from None
    return _report(ctx, task, methods[0], cfg, args.split, path.name)


def _check_checkpoint(ck: dict, path: Path, method: str, seed: int, run_id: str | None) -> None:
    """The checkpoint must be this run's: its method, seed and (when named) MLflow run id."""
    own = ck.get("final") or ck
    theirs = {"method": own.get("method"), "seed": own.get("seed"), "run id": own.get("run_id")}
    wanted = {"method": method, "seed": seed, "run id": run_id}
    wrong = [
        f"{k} {theirs[k]} (not {wanted[k]})"
        for k in wanted
        if wanted[k] is not None and theirs[k] is not None and str(theirs[k]) != str(wanted[k])
    ]
    if wrong:
        raise UsageError(f"checkpoint {path} is another run's: {', '.join(wrong)}")


def _report(ctx, task, method: str, cfg, split: str, source: str, best_val: bool = False) -> int:
    metrics, _ = ctx.evaluate(split)
    labels = [
        (k, label.replace("(last epoch)", "(best-validation weights)") if best_val else label)
        for k, label in task.summary_metrics
    ]
    shown = ", ".join(f"{label} {metrics[k]:.2f}" for k, label in labels if k in metrics)
    print(f"{method} seed {cfg.seed} on {cfg.task} {split} ({source}): {shown}")
    print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, indent=1, sort_keys=True))
    return 0


def _run_of(uri: str, args) -> str:
    """The MLflow run that logged a model URI (runs:/<id>/... or a registered models:/ URI)."""
    if uri.startswith("runs:/"):
        return uri[len("runs:/") :].split("/", 1)[0]
    import mlflow

    from benchmark.tracking import resolve_uri

    mlflow.set_tracking_uri(resolve_uri(args.tracking_uri))
    try:
        return mlflow.models.get_model_info(uri).run_id
    except Exception as e:  # noqa: BLE001 - unknown model
        raise UsageError(f"--model-uri {uri}: cannot be resolved ({type(e).__name__})") from None


def _eval_model(args, ctx, task, method: str, cfg) -> int:
    import mlflow
    import mlflow.pytorch
    import torch

    from benchmark.tracking import resolve_uri

    uri = resolve_uri(args.tracking_uri)
    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            student = mlflow.pytorch.load_model(args.model_uri, map_location="cpu")
            state = mlflow.artifacts.download_artifacts(
                run_id=args.run_id, artifact_path="method_state.pt", tracking_uri=uri, dst_path=tmp
            )
        except Exception as e:  # noqa: BLE001 - a run without a logged model, or logged before method_state.pt
            raise UsageError(
                f"--model-uri {args.model_uri}: the model or its method_state.pt cannot be read "
                f"({type(e).__name__}); log both with `run --set log_model=true`"
            ) from None
        ctx.student.load_state_dict(student.state_dict())
        ctx.method.load_state_dict(torch.load(state, map_location="cpu", weights_only=False)["method"])
    return _report(ctx, task, method, cfg, args.split, f"{args.model_uri}: the best-validation epoch's weights", best_val=True)


def _experiment_file(args, tmp: Path) -> str:
    import mlflow

    from benchmark.tracking import resolve_uri

    uri = resolve_uri(args.tracking_uri)
    try:
        mlflow.MlflowClient(uri).get_run(args.run_id)
    except Exception as e:  # noqa: BLE001 - MLflow says RESOURCE_DOES_NOT_EXIST (or a malformed id) in its own way
        raise UsageError(
            f"--run-id {args.run_id}: no such run in {uri} ({type(e).__name__}); `python -m benchmark "
            "report` lists the runs' ids in its footnotes and runs.csv"
        ) from None
    try:
        return mlflow.artifacts.download_artifacts(
            run_id=args.run_id, artifact_path="experiment.toml", tracking_uri=uri, dst_path=str(tmp)
        )
    except Exception as e:  # noqa: BLE001 - unknown run, or a run without the file
        raise UsageError(f"--run-id {args.run_id}: no experiment.toml in {uri} ({type(e).__name__})") from None


def add(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained run's weights on its task's test split (same metrics as run)")
    common_run_args(p)
    p.add_argument("--run-id", dest="run_id", help="the MLflow run to evaluate (its experiment.toml and checkpoint)")
    p.add_argument("--checkpoint", help="the checkpoint file (default: where `run` kept it)")
    p.add_argument(
        "--model-uri",
        dest="model_uri",
        help="a logged MLflow model (runs:/<run id>/student or "
        "models:/<name>/<version>) of a run made with --set log_model=true: its best-validation weights",
    )
    p.add_argument("--split", choices=["test", "val"], default="test", help="default test")
    p.add_argument(
        "--tracking-uri", dest="tracking_uri", help="MLflow URI of --run-id (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
    )
    p.add_argument("--out", help="the --out of the run (default runs/<task>-<profile>)")
    p.set_defaults(fn=cmd_eval, late_config=True, interrupted="evaluation stopped; nothing was written")
