"""The one training loop: every method on every task, seeded, checkpointed each epoch, tracked in MLflow."""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import replace
from typing import Any, cast

import torch
from tqdm.auto import tqdm

from benchmark import distributed
from benchmark.config import RunConfig
from benchmark.devices import resident, resolve_device, resolve_precision
from benchmark.evaluation import EvalInputs
from benchmark.interrupts import raise_if_terminated
from benchmark.method import hparam_fields, stream_seed
from benchmark.nets import build_student
from benchmark.optim import build_optimizer, build_scheduler
from benchmark.progress import Progress, quiet
from benchmark.registry import METHODS, UsageError
from benchmark.teacher_feed import TeacherFeed
from benchmark.types import Dims, StudentOut, Term, chw


class Diverged(FloatingPointError):
    """A non-finite training loss: that run stops (FAILED in MLflow, last good checkpoint kept); others go on."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run ends KILLED, its checkpoint is kept, --resume continues it."""


CHECK_EVERY = 20  # steps between finiteness checks (and progress-bar updates): one host sync each


def resolve_hparams(method_name: str, task, cfg: RunConfig, overrides: dict[str, Any]):
    """Method defaults <- task defaults (by field name) <- user overrides; returns the Hparams instance."""
    cls = METHODS.get(method_name)
    known = hparam_fields(cls)

    def mine(d: dict[str, Any]) -> dict[str, Any]:
        """ "field" applies to every method that has it; "method.field" (`--set kd.temperature=2`) to this one only,
        and wins over the bare key."""
        out = {k: v for k, v in d.items() if k in known}
        out.update(
            {k.split(".", 1)[1]: v for k, v in d.items() if k.startswith(f"{method_name}.") and k.split(".", 1)[1] in known}
        )
        return out

    return cls, cls.Hparams(**{**mine(task.hparam_defaults(cfg)), **mine(overrides)})


class Context:
    """Everything one run needs: config, task data, teacher tables, student, method, optimiser."""

    def __init__(self, cfg: RunConfig, task, data, tables, method_name: str, overrides: dict[str, Any]):
        self.cfg, self.task, self.data, self.method_name = cfg, task, data, method_name
        self.label = f"{method_name} seed {cfg.seed}"  # who progress lines name (a teacher being trained: its own)
        self.device = resolve_device(cfg.device)
        self.tables = tables.to(self.device)
        torch.manual_seed(stream_seed(cfg.seed, "init"))  # weights (student, method, task loss): their own stream
        self.student = build_student(cfg.student, data).to(self.device)
        if cfg.sync_bn:
            self.student = distributed.convert_sync_batchnorm(self.student)
        if self.student.channels_last:
            self.student = self.student.to(memory_format=torch.channels_last)
        self.steps_per_epoch = task.steps_per_epoch(data.train, cfg.batch_size)
        if self.steps_per_epoch < 1:
            raise UsageError(f"batch_size {cfg.batch_size} is larger than the training set ({len(data.train.y)})")
        dims = Dims(
            self.student.embed_dim,
            tables.dim,
            data.num_classes,
            list(self.student.map_channels),
            map_shapes=self._student_map_shapes(task, data) if tables.map_shapes else [],
            teacher_map_shapes=list(tables.map_shapes),
            train_size=len(data.train.y),
            train_labels=data.train.y,
            total_steps=cfg.epochs * self.steps_per_epoch,
            seed=cfg.seed,
        )
        cls, self.hparams = resolve_hparams(method_name, task, cfg, overrides)
        self.method = cls(dims, self.hparams).to(self.device)
        self.teacher_reads = frozenset(self.method.teacher_reads)
        if "maps" in self.teacher_reads and not tables.map_shapes:
            raise UsageError(
                f"method '{method_name}' reads the teacher's stage maps, but teacher "
                f"{tables.teacher_id} gives none (an image teacher with stages, on --task cifar100-kd)"
            )
        self.task_loss = task.make_loss(data.num_classes, self.student.embed_dim).to(self.device)
        # The teacher is not a module here at all: only its frozen, cached table (no parameters to optimise).
        distributed.broadcast_state(self.student, self.method, self.task_loss)
        self.params = [*self.student.parameters(), *self.method.parameters(), *self.task_loss.parameters()]
        self.opt = build_optimizer(self.params, cfg)
        self.sched = build_scheduler(self.opt, cfg, self.steps_per_epoch)
        self.gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "data"))  # data order, crops, variants
        # the student's forward, compiled on request (the module itself stays as is: state_dict keys unchanged)
        self.forward = torch.compile(self.student) if cfg.compile else self.student
        self.train_split, self.data_on_device = resident(data.train, self.device)
        self.train_y = data.train.y.to(self.device)
        # what the teacher gives each batch: table rows, a live teacher's outputs, or a negative control's targets
        self.feed = TeacherFeed(
            cfg,
            task,
            tables,
            self.train_split,
            data.num_classes,
            method_name,
            self.teacher_reads,
            float(getattr(self.hparams, "temperature", 1.0)),
            self.device,
            self.autocast,
            lambda: self.teacher_digest,
            self.precision_resolved,
        )

    def _student_map_shapes(self, task, data) -> list[tuple[int, int, int]]:
        """(C, H, W) of the student's stage maps for one un-augmented training input (eval mode, no gradients:
        no BatchNorm statistic and no random number is touched)."""
        x = task.augment(data.train.x[:1], None, False, self.cfg).to(self.device)
        was = self.student.training
        self.student.eval()
        with torch.no_grad():
            maps = self.student(x).maps
        self.student.train(was)
        return [chw(m) for m in maps]

    @functools.cached_property
    def teacher_digest(self) -> str:
        """The teacher instance's fingerprint (hashes every table row: computed once per run)."""
        return self.tables.digest()

    @property
    def precision_resolved(self) -> str:
        return resolve_precision(self.cfg.precision, self.device)

    def autocast(self):
        if self.precision_resolved == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """One optimiser step on the samples idx; returns loss, term means and #correct (all detached)."""
        cfg, tables = self.cfg, self.tables
        x = self.task.train_inputs(self.train_split, idx, self.gen, cfg).to(self.device, non_blocking=True)
        x = self.task.augment(x, self.gen, True, cfg)
        variant = torch.randint(0, tables.embedding.shape[1], (len(idx),), generator=self.gen).to(self.device)
        if distributed.world_size() > 1:  # the global batch was drawn and augmented as one process does; ours is a shard
            part = distributed.shard(len(idx))
            x, idx, variant = x[part], idx[part], variant[part]
        idx_d = idx.to(self.device)
        y = self.train_y[idx_d]
        teacher = self.feed(x, idx, idx_d, y, variant)
        with self.autocast():
            s = self.forward(x)
        # bf16 autocast covers the student's forward only: every loss (the task's and the method's, with their
        # heads) runs in fp32, since a relational Gram matrix or a softmax over many classes loses precision in bf16
        s = s.upcast()
        with torch.autocast(self.device.type, enabled=False):
            terms: dict[str, Term] = self.task_loss(s, y)
            if "ce" in terms:
                terms["ce"].weight = self.method.ce_weight
            # a method that asks for them (wants_index) also gets the samples' training-set indices
            terms.update(self.method.terms(s, teacher, y, **({"index": idx_d} if self.method.wants_index else {})))
            loss = cast(torch.Tensor, sum(t.weighted_mean() for t in terms.values()))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.params)
        self.opt.step()
        self.sched.step()
        self.method.post_step()
        correct = (s.logits.detach().argmax(1) == y).sum()
        return loss.detach(), {k: t.value.detach().float().mean() for k, t in terms.items()}, correct

    @contextlib.contextmanager
    def evaluating(self):
        """Student, method and task loss in eval mode without gradients (no BatchNorm buffer changes),
        restored to their previous mode afterwards."""
        modules = (self.student, self.method, self.task_loss)
        was = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            with torch.no_grad():
                yield self
        finally:
            for m, w in zip(modules, was):
                m.train(w)

    def evaluate(self, split: str) -> tuple[dict[str, float], dict[str, Any]]:
        """The task evaluates from EvalInputs alone (student and method in eval mode, no gradients)."""
        with self.evaluating():
            ev = EvalInputs(
                cfg=replace(self.cfg),
                data=self.data,
                tables=self.tables,
                device=self.device,
                method=self.method,
                embed=self._embed,
            )
            return self.task.evaluate(ev, split)

    def _embed(self, x: torch.Tensor) -> StudentOut:
        with torch.no_grad(), self.autocast():
            return self.student(x)

    def state(self) -> dict[str, Any]:
        return {
            "student": self.student.state_dict(),
            "method": self.method.state_dict(),
            "task_loss": self.task_loss.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "gen": self.gen.get_state(),
            **self.feed.state(),
        }

    def load_state(self, st: dict[str, Any]) -> None:
        self.student.load_state_dict(st["student"]), self.method.load_state_dict(st["method"])
        self.task_loss.load_state_dict(st["task_loss"])
        self.opt.load_state_dict(st["opt"]), self.sched.load_state_dict(st["sched"])
        self.gen.set_state(st["gen"])
        self.feed.load_state(st)  # a shuffled-teacher control's own stream

    def train_epoch(self, epoch: int, mid: dict | None = None, save_mid=None) -> dict[str, float]:
        """One epoch. save_mid(state) is called every cfg.checkpoint_every_s seconds between steps with what a
        resumed epoch needs (`mid`): its batches, the steps done, the data generator and the running sums; the
        model's and optimiser's state is the caller's to save beside it. Resumed from `mid`, the epoch goes on at
        its next step and ends with the figures and weights of an uninterrupted one."""
        if mid is None:
            batches = self.task.epoch_batches(self.data.train, self.cfg.batch_size, self.gen)
        else:
            batches = mid["batches"]
            self.gen.set_state(mid["gen"])
        if self.feed.stream:
            self.feed.stream.begin_epoch(
                epoch,
                sum(len(b) for b in batches),
                self.device,
                resume_at=sum(len(b) for b in batches[: mid["step"]]) if mid else 0,
            )
        # running sums stay on the device: no host sync per step (only every 20 steps for the progress bar)
        loss_sum, correct, seen = torch.zeros((), device=self.device), torch.zeros((), dtype=torch.long, device=self.device), 0
        term_sums: dict[str, torch.Tensor] = {}
        step_loss = torch.zeros(len(batches) + 1, device=self.device)  # per-step loss, to name the first bad step
        first = 0
        if mid is not None:
            first, seen = mid["step"], mid["seen"]
            loss_sum, correct = mid["loss_sum"].to(self.device), mid["correct"].to(self.device)
            term_sums = {k: v.to(self.device) for k, v in mid["term_sums"].items()}
            step_loss = mid["step_loss"].to(self.device)
        bar = tqdm(
            batches[first:],
            desc=f"{self.method_name} ep{epoch + 1}/{self.cfg.epochs}",
            initial=first,
            total=len(batches),
            leave=False,
            mininterval=2.0,
            disable=None if distributed.is_main() and not quiet() else True,
        )
        # in a log (no terminal: no bar), a line every 30 s of a long epoch
        step_lines = (
            Progress(self.label, len(batches), f"epoch {epoch + 1}/{self.cfg.epochs} step", every=30, first=False, start=first)
            if bar.disable and distributed.is_main()
            else None
        )
        every = self.cfg.checkpoint_every_s if save_mid is not None and distributed.world_size() == 1 else 0
        t0 = last_save = time.perf_counter()
        i = first - 1
        for i, idx in enumerate(bar, start=first):  # the batches actually produced (a sampler may yield fewer)
            raise_if_terminated()  # a SIGTERM whose exception Python dropped (see interrupts.on_sigterm)
            loss, terms, c = self.train_step(idx)
            step_loss[i] = loss
            loss_sum, correct, seen = loss_sum + loss, correct + c, seen + len(idx)
            for k, v in terms.items():
                term_sums[k] = term_sums.get(k, 0) + v
            if i % CHECK_EVERY == 0:
                self._check_finite(epoch, i, loss_sum, term_sums, step_loss)
                bar.set_postfix(loss=f"{loss_sum.item() / (i + 1):.3f}", acc=f"{100 * correct.item() / seen:.1f}")
                if step_lines is not None:
                    step_lines.update(i + 1, f"loss {loss_sum.item() / (i + 1):.3f}")
            if every and i + 1 < len(batches) and time.perf_counter() - last_save >= every:
                self._check_finite(epoch, i, loss_sum, term_sums, step_loss)  # never a checkpoint of a diverged run
                save_mid(
                    {
                        "epoch": epoch,
                        "step": i + 1,
                        "steps": len(batches),
                        "batches": batches,
                        "gen": self.gen.get_state(),
                        "seen": seen,
                        "loss_sum": loss_sum.cpu(),
                        "correct": correct.cpu(),
                        "term_sums": {k: v.cpu() for k, v in term_sums.items()},
                        "step_loss": step_loss.cpu(),
                        "elapsed_s": time.perf_counter() - t0 + (mid or {}).get("elapsed_s", 0.0),
                    }
                )
                last_save = time.perf_counter()
        self._check_finite(epoch, i, loss_sum, term_sums, step_loss)
        if self.feed.stream:
            self.feed.stream.end_epoch(epoch)
        if distributed.world_size() > 1:  # the epoch's figures over the global batches (loss: mean of the shards')
            w = distributed.world_size()
            loss_sum, correct = distributed.all_sum(loss_sum) / w, distributed.all_sum(correct)
            term_sums = {k: distributed.all_sum(v) / w for k, v in term_sums.items()}
        dt, steps = time.perf_counter() - t0 + (mid or {}).get("elapsed_s", 0.0), max(1, i + 1)
        out = {
            "train_loss": loss_sum.item() / steps,
            "train_top1": 100 * correct.item() / seen,
            "lr": self.opt.param_groups[0]["lr"],
            "epoch_time_s": dt,
            "train_images_per_s": seen / dt,
        }
        out.update({f"term_{k}": v.item() / steps for k, v in term_sums.items()})
        return out

    def _check_finite(self, epoch: int, i: int, loss_sum, term_sums, step_loss) -> None:
        check_finite(f"{self.method_name} seed {self.cfg.seed}", epoch, i, loss_sum, term_sums, step_loss)


def check_finite(who: str, epoch: int, i: int, loss_sum, term_sums, step_loss) -> None:
    """Raise Diverged when the loss so far is not finite. Under torchrun the flag is reduced over the ranks,
    so that every rank stops together (a NaN on one shard would otherwise stop that rank alone and leave the
    others waiting in the next collective)."""
    local_bad = not bool(torch.isfinite(loss_sum))
    if not distributed.any_rank(local_bad):
        return
    if not local_bad:
        raise Diverged(
            f"{who}: loss is not finite at epoch {epoch + 1} on another process (rank 0 of "
            f"{distributed.world_size()} reports this one's shard finite)"
            if distributed.is_main()
            else f"{who}: loss is not finite at epoch {epoch + 1} on another process"
        )
    first = int((~torch.isfinite(step_loss[: i + 1])).nonzero()[0])
    bad = [k for k, v in term_sums.items() if not bool(torch.isfinite(v))]
    where = f" on rank {distributed.rank()}" if distributed.world_size() > 1 else ""
    raise Diverged(
        f"{who}: loss is not finite at epoch {epoch + 1}, step {first + 1}{where} (terms: {', '.join(bad) or 'total only'})"
    )
