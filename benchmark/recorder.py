"""One run from start to end around the training loop (benchmark/trainer.py): its checkpoint key and lock, the
resume, the MLflow run (params, per-epoch metrics, the resolved experiment file, the dataset), the evaluation
at each epoch and at the end, and the run's state however it stops (FINISHED, FAILED or KILLED)."""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark import distributed
from benchmark.checkpoints import CheckpointNotWritten, load_checkpoint, run_key, run_lock, save_atomic
from benchmark.config import RunConfig
from benchmark.devices import cpu_bf16_native
from benchmark.plugins import external_plugins
from benchmark.progress import Progress
from benchmark.provenance import code_version
from benchmark.trainer import Context, Diverged


def better(a: float, b: float | None, mode: str) -> bool:
    return b is None or (a > b if mode == "max" else a < b)


def run_one(
    cfg: RunConfig,
    task,
    data,
    tables,
    method_name: str,
    overrides: dict[str, Any],
    tracker,
    out_dir: Path,
    resume: bool = False,
    parent_run_id: str | None = None,
    on_epoch=None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one (method, seed); returns the final metrics (and the MLflow run id)."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    ctx = Context(cfg, task, data, tables, method_name, overrides)
    key = run_key(cfg, method_name, ctx.hparams)
    ckpt_path = out_dir / "checkpoints" / f"{method_name}-seed{cfg.seed}-{key}.pt"
    rec = Record(tracker, key, ckpt_path, resume, parent_run_id, on_epoch, tags)
    with run_lock(ckpt_path, method_name, cfg.seed) if distributed.is_main() else contextlib.nullcontext():
        return _run(ctx, rec)


@dataclass
class Record:
    """Where and how one run is recorded: its MLflow tracker (and parent run, tags), its checkpoint (key, path,
    whether to resume from it), and who is told of each epoch."""

    tracker: Any
    key: str
    ckpt_path: Path
    resume: bool = False
    parent_run_id: str | None = None
    on_epoch: Callable[[int, dict], None] | None = None
    tags: dict[str, str] | None = None


def _run(ctx: Context, rec: Record) -> dict[str, Any]:
    cfg, task, data, tables, method_name = ctx.cfg, ctx.task, ctx.data, ctx.tables, ctx.method_name
    tracker, key, ckpt_path, resume = rec.tracker, rec.key, rec.ckpt_path, rec.resume
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    ck = load_checkpoint(ckpt_path, ctx.device) if resume else None
    if resume and distributed.is_main():  # --resume says what it found
        who = f"{method_name} seed {cfg.seed}"
        print(
            f"{who}: nothing to resume (no checkpoint): starting"
            if ck is None
            else f"{who}: finished before; its result is read from its checkpoint"
            if ck.get("done")
            else f"{who}: resuming epoch {ck['epoch'] + 1} of {cfg.epochs} at step {ck['mid']['step']} of "
            f"{ck['mid']['steps']} (a checkpoint within the epoch)"
            if ck.get("mid")
            else f"{who}: resuming after epoch {ck['epoch']} of {cfg.epochs}",
            flush=True,
        )
    if ck is not None and ck.get("done"):
        return ck["final"]
    sel = task.selection_metric
    params = {
        **cfg.as_params(),
        **data.info,
        **tables.params,
        "teacher_digest": ctx.teacher_digest,
        "method": method_name,
        "run_key": key,
        **{f"hp.{k}": v for k, v in asdict(ctx.hparams).items()},
        "ce_weight_effective": ctx.method.ce_weight,
        "match_space": ctx.method.match_space,
        **ctx.method.run_params(),
        **ctx.feed.control_params,
        "selection_rule": f"best epoch = {sel} ({task.selection_mode}); test reported at the last epoch "
        f"(primary) and at the best-validation epoch",
        "n_params_student": sum(p.numel() for p in ctx.student.parameters()),
        "student_weights": getattr(ctx.student, "weights", "random initialisation"),
        "n_params_method": sum(p.numel() for p in ctx.method.parameters()),
        "device_resolved": str(ctx.device),
        "torch_version": torch.__version__,
        "world_size": distributed.world_size(),
        "data_on_device": ctx.data_on_device,
        "precision_resolved": ctx.precision_resolved,
        "loss_precision": "fp32",
        "code_version": code_version(),
        "cpu_bf16_native": cpu_bf16_native() or "none",
        "num_classes": data.num_classes,
        "plugins": ",".join(external_plugins()),
    }  # `eval` and `report` load them again
    main = distributed.is_main()  # under torchrun, rank 0 alone logs, evaluates and writes checkpoints
    epochs = Progress(ctx.label, cfg.epochs, "epoch", start=ck["epoch"] if ck is not None and not ck.get("done") else 0)
    from benchmark.interrupts import uninterrupted

    if main:  # a RUNNING run of this key whose process died: KILLED (one alive elsewhere: refused)
        tracker.close_stale(key, resume, keep=ck["run_id"] if ck is not None else None)
    run_id, start, history, best, wall = "", 0, [], None, 0.0
    try:  # from the moment the run exists in MLflow, however the process is stopped, the run ends marked
        if ck is not None:
            ctx.load_state(ck["state"])
            run_id, start, history, best, wall = ck["run_id"], ck["epoch"], ck["history"], ck["best"], ck["wall_s"]
            if main:
                tracker.start("", {}, run_id=run_id)
        elif main:
            with uninterrupted():  # a SIGTERM while MLflow creates the run acts once its id is known here
                run_id = tracker.start(
                    f"{method_name}/seed{cfg.seed}",
                    {
                        "task": cfg.task,
                        "method": method_name,
                        "profile": cfg.profile,
                        "seed": str(cfg.seed),
                        "student": cfg.student,
                        "teacher": tables.teacher_id,
                        "xkd.kind": "train",
                        **(rec.tags or {}),
                    },
                    parent_run_id=rec.parent_run_id,
                )
            tracker.log_params(run_id, params)
            tracker.log_dict(run_id, params, "config.json")
            from benchmark import experiment

            tracker.log_text(
                run_id, experiment.dump(cfg, method_name, asdict(ctx.hparams), external_plugins()), "experiment.toml"
            )
            tracker.log_dataset(
                run_id,
                f"{cfg.task}",
                data.digest(),
                str(cfg.data_dir or ""),
                {k: v for k, v in data.info.items() if k.startswith(("n_", "data_", "split", "train_"))},
            )
        mid = ck.get("mid") if ck is not None else None  # an epoch interrupted after a checkpoint within it

        def save_mid(state: dict) -> None:  # the model as it is now, and where in its epoch it is
            save_atomic(
                {
                    "state": ctx.state(),
                    "epoch": state["epoch"],
                    "history": history,
                    "best": best,
                    "run_id": run_id,
                    "method": method_name,
                    "seed": cfg.seed,
                    "wall_s": wall,
                    "done": False,
                    "mid": state,
                },
                ckpt_path,
                keep_previous=True,
            )

        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            m = ctx.train_epoch(epoch, mid=mid, save_mid=save_mid if main else None)
            mid = None
            if not all(bool(torch.isfinite(p).all()) for p in (*ctx.student.parameters(), *ctx.method.parameters())):
                raise Diverged(f"{method_name} seed {cfg.seed}: weights are not finite after epoch {epoch + 1}")
            if not main:  # the other ranks only train; rank 0 evaluates and saves while they wait
                failed = distributed.rank0_outcome(None)
                if failed:
                    raise RuntimeError(
                        f"rank 0 failed after epoch {epoch + 1} ({failed}); rank {distributed.rank()} stops with it"
                    )
                if cfg.stop_after_epochs and epoch + 1 >= cfg.stop_after_epochs and epoch + 1 < cfg.epochs:
                    return {"interrupted_at_epoch": epoch + 1, "run_id": run_id}
                continue
            try:
                m.update(ctx.evaluate("val")[0])
                wall += time.perf_counter() - t0
                history.append(m)
                tracker.log_metrics(run_id, m, step=epoch + 1)
                if best is None or better(m[sel], best["value"], task.selection_mode):
                    best = {
                        "epoch": epoch + 1,
                        "value": m[sel],
                        "student": copy.deepcopy(ctx.student.state_dict()),
                        "method": copy.deepcopy(ctx.method.state_dict()),
                    }
                save_atomic(
                    {
                        "state": ctx.state(),
                        "epoch": epoch + 1,
                        "history": history,
                        "best": best,
                        "run_id": run_id,
                        "method": method_name,
                        "seed": cfg.seed,
                        "wall_s": wall,
                        "done": False,
                    },
                    ckpt_path,
                    keep_previous=True,
                )
            except BaseException as e:  # the other ranks wait for this epoch's outcome: they stop with its reason
                distributed.rank0_outcome(f"{type(e).__name__}: {str(e)[:300]}")
                raise
            distributed.rank0_outcome(None)
            epochs.update(epoch + 1, f"train loss {m['train_loss']:.3f}, {sel} {m[sel]:.2f}")
            if rec.on_epoch is not None:
                rec.on_epoch(epoch + 1, m)
            if cfg.stop_after_epochs and epoch + 1 >= cfg.stop_after_epochs and epoch + 1 < cfg.epochs:
                tracker.end(run_id, status="KILLED")
                return {"interrupted_at_epoch": epoch + 1, "run_id": run_id}
        if not main:
            return {"method": method_name, "seed": cfg.seed, "run_id": "", "rank": distributed.rank()}
        assert best is not None, "a run that reaches its test has trained at least one epoch"
        t0 = time.perf_counter()
        final, arrays = ctx.evaluate("test")
        last = {
            k: copy.deepcopy(m.state_dict())  # what `eval` loads
            for k, m in (("student", ctx.student), ("method", ctx.method), ("task_loss", ctx.task_loss))
        }
        if best["epoch"] == cfg.epochs:  # the best-validation weights are the last ones: nothing to re-evaluate
            at_best = final
        else:
            ctx.student.load_state_dict(best["student"]), ctx.method.load_state_dict(best["method"])
            at_best, _ = ctx.evaluate("test")
        wall += time.perf_counter() - t0
    except BaseException as e:
        # stopped on purpose (Ctrl-C, SIGTERM, an Optuna pruner): KILLED; anything else: FAILED, with the reason
        stopped = isinstance(e, KeyboardInterrupt) or type(e).__name__ == "TrialPruned"
        if not main or not run_id:  # another rank, or stopped before the run existed
            raise
        if not stopped:
            tracker.set_tag(run_id, "xkd.failure", f"{type(e).__name__}: {e}"[:5000])
        tracker.end(run_id, status="KILLED" if stopped else "FAILED")
        raise
    final = {
        **final,
        **{f"{k}_at_best_val": v for k, v in at_best.items()},
        "best_val_epoch": best["epoch"],
        f"best_{sel}": best["value"],
        "wall_s": wall,
        "mean_train_images_per_s": sum(h["train_images_per_s"] for h in history) / len(history),
        "first_epoch_train_loss": history[0]["train_loss"],
    }  # with train_loss (the last): a flat loss shows
    if ctx.feed.stream is not None:  # epochs whose teacher outputs another run of this stream had computed
        final["teacher_epochs_shared"] = ctx.feed.stream.reads
    tracker.log_metrics(run_id, final, step=cfg.epochs)
    tracker.log_dict(run_id, history, "history.json")
    if arrays:  # with the class names, so that a figure can name the classes it colours
        tracker.log_arrays(run_id, {**arrays, "class_names": np.array(data.class_names)}, "features.npz")
    if cfg.log_model:
        ctx.student.eval()
        tracker.log_model(run_id, ctx.student, data.class_names, weights=f"best-validation epoch {best['epoch']}")
        tracker.log_torch(run_id, {"method": ctx.method.state_dict()}, "method_state.pt")  # for `eval --model-uri`
    tracker.end(run_id)
    result: dict[str, Any] = {**final, "run_id": run_id, "method": method_name, "seed": cfg.seed}
    # the run is complete: optimiser state dropped, the last epoch's weights kept for `eval`
    try:
        save_atomic({"done": True, "final": result, "weights": last}, ckpt_path)
        ckpt_path.with_suffix(".prev").unlink(missing_ok=True)
    except CheckpointNotWritten as e:  # the run is finished and logged; only `eval --checkpoint` loses its file
        print(f"warning: {e}; the run itself is complete in MLflow", file=sys.stderr, flush=True)
    return result
