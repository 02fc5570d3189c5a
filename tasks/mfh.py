"""The Modality Focusing Hypothesis setting (Xue et al., ICLR 2023), faithful to their gauss/main.py: binary
hyperplane labels, the student's decisive features fixed while the teacher's window slides
(tasks/mfh_data.py), a linear teacher and a linear student, full-batch SGD (lr 0.1, 1000 steps), KD with
weights [1, 1] on cross-entropy and their KLDivLoss (T = 1; torch's default 'mean' over N x 2 elements is
half the per-sample KL summed over the classes, hence kd_weight 0.5 here). Their teacher learns from the
same 200 training rows as the student; so does ours in this task (their protocol, not the synthetic task's).
A harness epoch is 100 full-batch steps, so the `quick` profile's 10 epochs are their 1000.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.registry import TASKS, TEACHERS, UsageError
from benchmark.task import Split, Task, TaskData
from benchmark.teacher_tables import TeacherTables
from tasks.mfh_data import check, draw, gamma_of
from tasks.synthetic_data import child, torch_generator

N_TRAIN, N_VAL, N_TEST = 200, 200, 1000  # theirs: 200 train, 1000 test; the validation draw is ours (selection only)
STEPS_PER_EPOCH = 100


@dataclass
class MFHData(TaskData):
    teacher_x: torch.Tensor | None = None  # the teacher modality's rows (train, val, test), indexed by Split.key


def seeds(cfg) -> np.random.SeedSequence:
    return np.random.SeedSequence(cfg.split_seed, spawn_key=(2, cfg.seed))


def fit_linear(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, steps: int = 1000, lr: float = 0.1) -> torch.nn.Linear:
    """Their train(): a linear classifier, full-batch SGD, cross-entropy."""
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
        model = torch.nn.Linear(x.shape[1], 2)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


class LinearTeacher:
    """Registry entry: the mfh task trains it itself (on the teacher modality's training rows)."""

    modality = "vector"

    def __init__(self, options=None):
        raise UsageError("the linear teacher is built by the mfh task (--task mfh)")


TEACHERS.add("linear-teacher", LinearTeacher, "linear classifier on the teacher modality, full-batch SGD (the mfh task)")


@TASKS.register(
    "mfh",
    "the Modality Focusing Hypothesis setting (Xue et al. 2023): hyperplane labels, sliding teacher "
    "window, linear models, full-batch SGD; seconds per run",
)
class MFH(Task):
    name = "mfh"
    main_setting = (("mfh_gamma", 1.0),)
    summary_metrics = [("test_top1", "test top-1 (last epoch)"), ("test_top1_at_best_val", "test top-1 (best-val epoch)")]
    profile_notes = {"smoke": "200 full-batch steps (tests)", "quick": "their protocol: 1000 full-batch steps, lr 0.1"}
    _common = dict(
        student="linear",
        teacher="linear-teacher",
        teacher_logits="own",
        batch_size=N_TRAIN,
        lr=0.1,
        momentum=0.0,
        nesterov=False,
        weight_decay=0.0,
        schedule="step",
        lr_step_epochs=1000,
    )
    profiles = {"smoke": dict(_common, epochs=2), "quick": dict(_common, epochs=10)}

    def hparam_defaults(self, cfg):
        return {"temperature": 1.0, "ce_weight": 1.0, "kd_weight": 0.5}

    def load(self, cfg) -> TaskData:
        if cfg.student != "linear":
            raise UsageError(f"the mfh task's models are linear: use --set student=linear (not {cfg.student})")
        check(cfg.mfh_mode, cfg.mfh_dim)
        root = seeds(cfg)
        draws = [draw(cfg.mfh_mode, cfg.mfh_dim, n, root, i) for i, n in enumerate((N_TRAIN, N_VAL, N_TEST))]
        splits, offset = [], 0
        for d in draws:
            splits.append(Split(d.x_student, d.y, torch.arange(offset, offset + len(d.y))))
            offset += len(d.y)
        label = f"SeedSequence({root.entropy}, spawn_key={tuple(root.spawn_key)})"
        info = {
            "n_train": N_TRAIN,
            "n_val": N_VAL,
            "n_test": N_TEST,
            "mfh_gamma": round(gamma_of(cfg.mfh_mode, cfg.mfh_dim), 4),
            "mfh_data_seed": label,
            "split_rule": f"independent draws per split ({label})",
        }
        return MFHData(*splits, ["0", "1"], 2, info, teacher_x=torch.cat([d.x_teacher for d in draws]))

    def teacher_tables(self, cfg, data, cache) -> TeacherTables:
        if cfg.teacher != "linear-teacher" or cfg.teacher_logits != "own":
            raise UsageError("mfh: the teacher is linear-teacher with teacher_logits=own")
        x_a = data.teacher_x
        gen = torch_generator(child(seeds(cfg), 9))
        teacher = fit_linear(x_a[data.train.key], data.train.y, gen)
        with torch.no_grad():
            logits = teacher(x_a)

        def acc(split):
            return round((logits[split.key].argmax(1) == split.y).float().mean().item() * 100, 2)

        params = {
            "teacher_id": "linear-teacher/sgd0.1/1000",
            "teacher_cache_key": "",
            "teacher_train_acc": acc(data.train),
            "teacher_test_acc": acc(data.test),
        }
        return TeacherTables("linear-teacher/sgd0.1/1000", "", x_a.unsqueeze(1), logits.unsqueeze(1), params)

    def data_for_seed(self, cfg, data, tables, cache):
        label = f"SeedSequence({seeds(cfg).entropy}, spawn_key={tuple(seeds(cfg).spawn_key)})"
        if data.info.get("mfh_data_seed") == label:
            return data, tables
        data = self.load(cfg)
        return data, self.teacher_tables(cfg, data, cache)

    def steps_per_epoch(self, split, batch_size):
        return STEPS_PER_EPOCH

    def epoch_batches(self, split, batch_size, gen):
        return [torch.arange(len(split.y))] * STEPS_PER_EPOCH  # full batch, their optimiser

    def augment(self, x, gen, train, cfg):
        return x.float()

    def evaluate(self, ev, split):
        sp = getattr(ev.data, split)
        out = ev.embed(sp.x.to(ev.device))
        return {f"{split}_top1": (out.logits.float().argmax(1).cpu() == sp.y).float().mean().item() * 100}, {}
