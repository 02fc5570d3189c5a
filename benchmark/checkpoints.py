"""A run's checkpoints: its key (what it computes), files written whole or not at all, read back with a
fallback to the previous one, and the lock that lets one process at a time train a run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmark.config import OPERATIONAL, RunConfig
from benchmark.provenance import code_version
from benchmark.registry import UsageError


class CheckpointNotWritten(OSError):
    """A checkpoint could not be written (a full disk, a folder turned read-only): that run stops (FAILED in
    MLflow, no temporary file left), the others go on, each saying why in one line."""


def run_key(cfg: RunConfig, method_name: str, hparams) -> str:
    # the code version too: a finished checkpoint of other code never feeds its old metrics into a new table
    spec = {k: v for k, v in asdict(cfg).items() if k not in OPERATIONAL} | {
        "method": method_name,
        "hp": asdict(hparams),
        "code_version": code_version(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def save_atomic(obj: Any, path: Path, keep_previous: bool = False) -> None:
    """Written whole or not at all (temporary file, then rename); keep_previous keeps the last one as .prev."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    why = ""
    try:
        with open(tmp, "wb") as f:  # closed on any failure: a deleted file still open keeps its space (full disk)
            torch.save(obj, f)
        if keep_previous and path.exists():
            os.replace(path, path.with_suffix(".prev"))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        tmp.unlink(missing_ok=True)
        cause: BaseException | None = e
        while cause is not None:  # Ctrl-C or SIGTERM inside torch.save, which its writer's clean-up turned into a
            if isinstance(cause, KeyboardInterrupt):  # RuntimeError: an interrupt, not a failed write
                raise cause from None
            cause = cause.__context__
        import errno
        import shutil

        full = getattr(e, "errno", None) == errno.ENOSPC or shutil.disk_usage(path.parent).free < 1 << 20
        why = "no space left on its device" if full else f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    if why:  # raised outside the handler: no reference to the failed write's frames (and open file) is kept
        raise CheckpointNotWritten(f"checkpoint {path} could not be written ({why}); nothing partial was left behind")


def load_checkpoint(path: Path, device) -> dict | None:
    """The checkpoint, else the previous one when it is unreadable (said in one line), else None."""
    for candidate in (path, path.with_suffix(".prev")):
        if not candidate.exists():
            continue
        try:
            return torch.load(candidate, map_location=device, weights_only=False)
        except Exception as e:
            print(
                f"checkpoint {candidate} cannot be read ({type(e).__name__}); "
                + ("trying the previous one" if candidate == path else "starting this run from scratch"),
                flush=True,
            )
    return None


@contextlib.contextmanager
def run_lock(ckpt_path: Path, method: str, seed: int):
    """One process at a time trains a run (its settings, i.e. its checkpoint): a second process started with
    the same command is refused before it writes anything for that run (flock: released when the process
    ends, however it ends)."""
    import fcntl

    lock = ckpt_path.parent / ".locks" / f"{ckpt_path.stem}.lock"  # beside, not among, the checkpoints
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "another process"
            raise UsageError(
                f"{method} seed {seed} with these settings is being trained by {owner} (lock {lock}); "
                "wait for it or stop it first"
            ) from None
        f.seek(0), f.truncate(), f.write(f"process {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0), f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
