"""The live teacher's vector outputs on a run's augmented training stream, computed once and shared.

An image teacher runs in the training loop on the student's augmented batch. Every method of one seed draws the
same batches and augmentations (the run's data stream is seeded by the seed alone), so the teacher sees the same
inputs in every run of that seed: its embedding and logits are computed by the first run that reads them and
stored per epoch (`<cache>/teacher_stream/<key>/epoch<E>.pt`), and later runs of the same stream read them instead
of running the teacher. The key hashes everything that decides those outputs: the teacher (its digest), the run
configuration (seed, data, augmentation, batch size), the precision, the device kind, the CPU threads and the
code version. The stage maps that FitNet, SP, ICKD and AT read are not stored (a run that reads them runs the
teacher as before); neither is a shuffled-teacher control's stream. An epoch is stored only when it finished;
a stored epoch that does not fit the run (a changed size) is not used."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch


class TeacherStream:
    def __init__(self, folder: Path):
        self.folder = folder
        self.stored: tuple[torch.Tensor, torch.Tensor] | None = None
        self.pos = 0
        self.parts: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.reads = self.writes = 0  # epochs read from the store, epochs written to it (for the run's params)

    @classmethod
    def for_run(cls, cfg, teacher_digest: str, precision: str, device: torch.device, root: Path) -> TeacherStream:
        from benchmark.provenance import code_version

        fields = {
            k: v
            for k, v in asdict(cfg).items()
            if k not in ("stop_after_epochs", "log_model", "checkpoint_every_s", "task_fields")
        }
        key = json.dumps(
            {
                "cfg": fields,
                "task_fields": cfg.task_fields,
                "teacher": teacher_digest,
                "precision": precision,
                "device": device.type,
                "threads": torch.get_num_threads(),
                "code": code_version(),
            },
            sort_keys=True,
            default=str,
        )
        return cls(root / "teacher_stream" / hashlib.sha256(key.encode()).hexdigest()[:24])

    def begin_epoch(self, epoch: int, rows: int, device: torch.device, resume_at: int = 0) -> None:
        """Read epoch `epoch`'s stored outputs, onto the run's device once, when they exist for exactly `rows`
        samples; else record this epoch's (kept on the device until the epoch ends: no copy per step). An epoch
        resumed at sample `resume_at` reads on from there, or records nothing (its first part is not here)."""
        self.stored, self.pos, self.parts = None, resume_at, None
        path = self._path(epoch)
        if path.exists():
            try:
                emb, logits = torch.load(path, map_location=device)
                if len(emb) == rows == len(logits):
                    self.stored = (emb, logits)
                    self.reads += 1
                    return
            except Exception:  # noqa: BLE001 - an unreadable entry is recomputed (and written again)
                pass
        self.parts = [] if resume_at == 0 else None

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The next n samples' (embedding, logits), or None when this epoch is not stored."""
        if self.stored is None:
            return None
        emb, logits = self.stored
        out = emb[self.pos : self.pos + n], logits[self.pos : self.pos + n]
        self.pos += n
        return out

    def record(self, emb: torch.Tensor, logits: torch.Tensor) -> None:
        if self.parts is not None:  # copies: a method may change its teacher tensors in place
            self.parts.append((emb.detach().clone(), logits.detach().clone()))

    def end_epoch(self, epoch: int) -> None:
        """Store a whole epoch that was computed here (written whole or not at all)."""
        if not self.parts:
            return
        emb = torch.cat([p[0] for p in self.parts]).cpu()  # one copy off the device per epoch
        logits = torch.cat([p[1] for p in self.parts]).cpu()
        self.parts = None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(epoch)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            torch.save((emb, logits), tmp)
            os.replace(tmp, path)
            self.writes += 1
        except OSError:  # a full cache disk: the run goes on, later runs compute their teacher as before
            tmp.unlink(missing_ok=True)

    def _path(self, epoch: int) -> Path:
        return self.folder / f"epoch{epoch}.pt"
