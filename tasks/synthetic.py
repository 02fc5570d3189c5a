"""A controlled cross-modal task: known shared and modality-specific decisive factors (tasks/synthetic_data.py).

The teacher is an MLP the harness trains on a draw of its own modality of its own (`synth_teacher_per_class`
samples per class, independent of every split the student sees; cached by content hash like every teacher), frozen, exposing its
embedding and its own logits; the student (an MLP) sees the
other modality. Sweeping synth_gamma (the shared share of the teacher's decisive factors) and synth_beta
(the student's own decisive factors) asks the paper's question where the answer is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from benchmark.evaluation import match_per_sample_teacher
from benchmark.registry import TASKS, UsageError
from benchmark.task import Split, Task, TaskData
from benchmark.teacher_tables import TeacherTables
from benchmark.teachers import TeacherOptions, build_teacher, teacher_class
from tasks.synthetic_data import Generator, SyntheticSpec, child


@dataclass
class SyntheticData(TaskData):
    teacher_x: torch.Tensor | None = None  # the teacher modality's inputs, rows indexed by Split.key
    pretrain_x: torch.Tensor | None = None  # the teacher's own training draw (its modality) and labels
    pretrain_y: torch.Tensor | None = None


def per_class_counts(cfg) -> tuple[int, int, int]:
    try:
        counts = tuple(int(v) for v in cfg.synth_per_class.split(","))
        if len(counts) != 3 or min(counts) < 1:
            raise ValueError
    except ValueError:
        raise UsageError(
            f"synth_per_class={cfg.synth_per_class!r} must be three positive integers TRAIN,VAL,TEST (samples per class)"
        ) from None
    return counts


def spec_of(cfg) -> SyntheticSpec:
    return SyntheticSpec(
        classes=cfg.synth_classes,
        factors=cfg.synth_factors,
        gamma=cfg.synth_gamma,
        beta=cfg.synth_beta,
        nuisance=cfg.synth_nuisance,
        separation=cfg.synth_separation,
        noise=cfg.synth_noise,
        teacher_noise=cfg.synth_teacher_noise,
    )


def data_seed(cfg) -> np.random.SeedSequence:
    """The root of every random stream of one data draw: one per (split_seed, run seed) with per_seed, one per
    split_seed with fixed (spawn keys (1, seed) and (0,) never meet); tasks/synthetic_data.py splits it."""
    return np.random.SeedSequence(cfg.split_seed, spawn_key=(1, cfg.seed) if cfg.synth_data == "per_seed" else (0,))


def seed_label(ss: np.random.SeedSequence) -> str:
    return f"SeedSequence({ss.entropy}, spawn_key={tuple(ss.spawn_key)})"


@TASKS.register(
    "synthetic",
    "controlled cross-modal Gaussian factors (shared share gamma, student-only beta); MLP teacher and student, CPU minutes",
)
class Synthetic(Task):
    name = "synthetic"
    # random: the MLP teacher at its initialisation, untrained
    teacher_controls = ("random", "shuffled", "class_mean", "label_smoothing")
    main_setting = (("synth_gamma", 1.0),)
    profile_notes = {
        "smoke": "seconds per method: 20 per class, 3 epochs (tests, CI)",
        "quick": "100 per class, 8 epochs (validation accuracy still rising at the end), MLP student: "
        "all 14 methods x 5 seeds in a few minutes",
    }
    profiles = {
        "smoke": dict(
            student="mlp",
            teacher="mlp-teacher",
            teacher_logits="own",
            epochs=3,
            batch_size=64,
            lr=0.05,
            synth_per_class="20,10,20",
            synth_teacher_per_class=200,
            schedule="onecycle",
            weight_decay=5e-4,
        ),
        "quick": dict(
            student="mlp",
            teacher="mlp-teacher",
            teacher_logits="own",
            epochs=8,
            batch_size=128,
            lr=0.05,
            schedule="onecycle",
            weight_decay=5e-4,
            nesterov=True,
        ),
    }

    def hparam_defaults(self, cfg):
        return {"feat_dist": "l2sq_norm_sum", "margin": 0.09, "beta": 1.0, "ccl_tau": 0.1}

    def load(self, cfg) -> TaskData:
        if cfg.student != "mlp":
            raise UsageError(f"the synthetic task's inputs are vectors: use --set student=mlp (not {cfg.student})")
        n_tr, n_val, n_te = per_class_counts(cfg)
        spec, seed = spec_of(cfg), data_seed(cfg)
        gen = Generator(spec, child(seed, 0))
        # independent streams: 1 the teacher's pretraining draw, 2-4 train, validation and test
        pre = gen.draw(cfg.synth_teacher_per_class, child(seed, 1))
        draws = [gen.draw(n, child(seed, i + 2)) for i, n in enumerate((n_tr, n_val, n_te))]
        offset, splits = 0, []
        for d in draws:  # teacher key = the sample's row in the teacher table (train, then val, then test)
            splits.append(Split(d.x_student, d.y, torch.arange(offset, offset + len(d.y))))
            offset += len(d.y)
        info = {
            "n_train": len(draws[0].y),
            "n_val": len(draws[1].y),
            "n_test": len(draws[2].y),
            "synth_data_seed": seed_label(seed),
            "synth_teacher_pretrain": len(pre.y),
            "synth_shared_factors": spec.d_sh,
            "synth_teacher_only_factors": spec.factors - spec.d_sh,
            "synth_student_only_factors": spec.d_so,
            "synth_input_dims": f"teacher {spec.teacher_dim}, student {spec.student_dim}",
            "split_rule": f"independent draws per split from the generator (data seed {seed_label(seed)}); "
            "the teacher trains on a draw of its own",
        }
        names = [f"class {c}" for c in range(spec.classes)]
        return SyntheticData(
            *splits,
            names,
            spec.classes,
            info,
            teacher_x=torch.cat([d.x_teacher for d in draws]),
            pretrain_x=pre.x_teacher,
            pretrain_y=pre.y,
        )

    def teacher_tables(self, cfg, data: TaskData, cache) -> TeacherTables:
        if getattr(teacher_class(cfg.teacher), "modality", "") != "vector":
            raise UsageError(f"synthetic needs a vector teacher (mlp-teacher), not '{cfg.teacher}'")
        if cfg.teacher_logits != "own":
            raise UsageError("synthetic: teacher_logits must be 'own' (the trained teacher's classifier)")
        labels = data.pretrain_y  # the teacher learns from its own draw only, never from the student's rows
        teacher = build_teacher(
            cfg.teacher, TeacherOptions(train_labels=tuple(int(v) for v in labels), untrained=cfg.teacher_control == "random")
        )
        n_pre = len(labels)
        rows = list(data.pretrain_x.numpy()) + list(data.teacher_x.numpy())
        out, key = cache.embeddings(teacher, rows, extra={"train_labels": labels.tolist()})
        own, out = out[:n_pre], out[n_pre:]  # the teacher's own training rows, then the student's splits' rows
        emb, logits = out[:, : teacher.dim], out[:, teacher.dim :]

        def acc(lg, y):
            return round((lg.argmax(1) == y).float().mean().item() * 100, 2)

        params = {
            "teacher_id": teacher.id,
            "teacher_cache_key": key,
            "teacher_pretrain_acc": acc(own[:, teacher.dim :], labels),
            "teacher_train_acc": acc(logits[data.train.key], data.train.y),
            "teacher_test_acc": acc(logits[data.test.key], data.test.y),
            "teacher_norm_mean": round(emb.norm(dim=-1).mean().item(), 4),
        }
        return TeacherTables(teacher.id, key, emb.unsqueeze(1), logits.unsqueeze(1), params)

    def data_for_seed(self, cfg, data, tables, cache):
        if cfg.synth_data != "per_seed" or data.info.get("synth_data_seed") == seed_label(data_seed(cfg)):
            return data, tables
        data = self.load(cfg)
        return data, self.teacher_tables(cfg, data, cache)

    def augment(self, x, gen, train, cfg):
        return x.float()

    def evaluate(self, ev, split):
        data = ev.data
        sp = getattr(data, split)
        logits, emb = [], []
        for i in range(0, len(sp.y), ev.cfg.eval_batch_size):
            out = ev.embed(sp.x[i : i + ev.cfg.eval_batch_size].to(ev.device))
            logits.append(out.logits.float().cpu()), emb.append(out.embedding.float().cpu())
        logits, emb = torch.cat(logits), torch.cat(emb)
        metrics = {f"{split}_top1": (logits.argmax(1) == sp.y).float().mean().item() * 100}
        if split != "test":
            return metrics, {}
        metrics["match_acc"], arrays = match_per_sample_teacher(ev, sp, emb, sp.y.numpy())
        return metrics, arrays
