"""What the teacher gives each training batch: the trainer asks once per step and gets a TeacherOut.

The answer is one of: the cached tables' rows for the batch's samples (a text or table teacher); a live teacher's
outputs on the student's augmented batch (an image teacher), computed once per seed and shared between that
seed's runs through a TeacherStream; or a negative control's targets (`teacher_control`, docs/methods.md):
`shuffled` gives sample i the teacher's outputs for sample shuffle[i] (a permutation of the training set fixed
per run seed, drawn from a stream of its own; a live teacher sees sample shuffle[i]'s input, augmented with a
generator of its own, so that the student's data stream is the real-teacher run's); `class_mean` gives every
sample its class's mean teacher outputs over the training set's un-augmented rows (label-level knowledge only,
the teacher's statistics kept); `label_smoothing` uses no teacher at all: logits T log p_eps of a smoothed
one-hot whose entropy at the method's temperature T is the teacher's mean target entropy. Evaluation always
reads the real teacher's own rows."""

from __future__ import annotations

from typing import Any, Callable, ContextManager

import torch

from benchmark import distributed
from benchmark.config import RunConfig
from benchmark.method import stream_seed
from benchmark.registry import UsageError
from benchmark.teacher_tables import TeacherTables, class_means, matched_label_smoothing
from benchmark.types import TeacherOut


class TeacherFeed:
    def __init__(
        self,
        cfg: RunConfig,
        task,
        tables: TeacherTables,
        train_split,
        num_classes: int,
        method_name: str,
        teacher_reads: frozenset[str],
        temperature: float,
        device: torch.device,
        autocast: Callable[[], ContextManager],
        teacher_digest: Callable[[], str],
        precision: str,
    ):
        self.cfg, self.task, self.tables, self.train_split, self.reads = cfg, task, tables, train_split, teacher_reads
        self.autocast, self.device = autocast, device
        self.train_key = train_split.key.to(device)
        n = len(train_split.y)
        self.shuffle: torch.Tensor | None = None
        self.shuffle_cpu: torch.Tensor | None = None
        self.shuffle_gen: torch.Generator | None = None
        if cfg.teacher_control == "shuffled":
            g = torch.Generator().manual_seed(stream_seed(cfg.seed, "teacher_shuffle"))
            self.shuffle_cpu = torch.randperm(n, generator=g)  # gathers inputs, as idx does
            self.shuffle = self.shuffle_cpu.to(device)  # looks up table keys on the device, once per run
            self.shuffle_gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "teacher_shuffle_augment"))
        # per-class targets [K, ...] (embedding, logits) of the class_mean and label_smoothing controls
        self.class_targets: tuple[torch.Tensor | None, torch.Tensor | None] | None = None
        self.control_params: dict[str, Any] = {}
        if cfg.teacher_control in ("class_mean", "label_smoothing"):
            self._class_targets(method_name, temperature, train_split.y.to(device), num_classes)
        # a live teacher's embedding and logits on this seed's stream: computed once, read by the seed's other runs
        self.stream = None
        if (
            cfg.share_teacher
            and tables.live is not None
            and self.reads
            and "maps" not in self.reads
            and self.shuffle is None
            and self.class_targets is None
            and distributed.world_size() == 1
        ):
            from benchmark.teacher_cache import default_cache_dir
            from benchmark.teacher_stream import TeacherStream

            self.stream = TeacherStream.for_run(cfg, teacher_digest(), precision, device, default_cache_dir())

    def _class_targets(self, method_name: str, temperature: float, train_y: torch.Tensor, num_classes: int) -> None:
        control, tables = self.cfg.teacher_control, self.tables
        if "maps" in self.reads:
            raise UsageError(
                f"teacher_control={control} gives each sample its class's targets; "
                f"method '{method_name}' reads the teacher's stage maps, which it has none of"
            )
        if control == "class_mean":
            self.class_targets = class_means(tables, self.train_key, train_y, num_classes)
            return
        if self.reads - {"logits"} or tables.logits is None:
            raise UsageError(
                f"teacher_control=label_smoothing replaces the teacher's logits only; method "
                f"'{method_name}' reads its {', '.join(sorted(self.reads - {'logits'}))}"
                if tables.logits is not None
                else f"teacher_control=label_smoothing needs the teacher's logits; {tables.teacher_id} gives none"
            )
        logits, self.control_params = matched_label_smoothing(tables.logits[self.train_key], temperature, num_classes)
        self.class_targets = (None, logits.to(self.device))

    def __call__(self, x: torch.Tensor, idx: torch.Tensor, idx_d: torch.Tensor, y: torch.Tensor, variant) -> TeacherOut:
        """The teacher's outputs for the batch idx (idx_d: on the device; x: the student's augmented inputs; y:
        labels; variant: the drawn table variant per sample)."""
        tables = self.tables
        if self.class_targets is not None:  # a per-class control: no teacher forward, its class's targets
            emb, logits = self.class_targets
            return TeacherOut(None if emb is None else emb[y], None if logits is None else logits[y])
        if tables.live is not None and not self.reads:  # nothing reads the teacher: no forward at all
            return TeacherOut()
        if tables.live is not None:  # an image teacher sees the student's augmented batch (no per-crop cache)
            x_t = x
            if self.shuffle_cpu is not None:
                cfg, gen = self.cfg, self.shuffle_gen
                inputs = self.task.train_inputs(self.train_split, self.shuffle_cpu[idx], gen, cfg)
                x_t = self.task.augment(inputs.to(self.device, non_blocking=True), gen, True, cfg)
            stored = self.stream.take(len(idx)) if self.stream else None
            if stored is not None:
                return TeacherOut(*stored)
            with torch.no_grad(), self.autocast():
                emb_t, logits_t, maps_t = tables.live(x_t)
            emb_t, logits_t = emb_t.float(), logits_t.float()
            if self.stream:
                self.stream.record(emb_t, logits_t)
            return TeacherOut(emb_t, logits_t, [m.float() for m in maps_t] if "maps" in self.reads else None)
        key = self.train_key[idx_d if self.shuffle is None else self.shuffle[idx_d]]
        return TeacherOut(tables.embedding[key, variant], None if tables.logits is None else tables.logits[key, variant])

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the feed: a shuffled-teacher control's own augmentation stream."""
        return {"shuffle_gen": self.shuffle_gen.get_state()} if self.shuffle_gen is not None else {}

    def load_state(self, st: dict[str, Any]) -> None:
        if self.shuffle_gen is not None and "shuffle_gen" in st:
            self.shuffle_gen.set_state(st["shuffle_gen"])
