"""Frozen teacher embeddings computed once and stored on disk, keyed by a content hash."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch


def default_cache_dir() -> Path:
    return Path(os.environ.get("XKD_CACHE_DIR", Path.home() / ".cache" / "xkd-bench"))


def content_hash(teacher_id: str, inputs: Sequence[Any], extra: dict | None = None) -> str:
    """sha256 over the encoder id, every input (strings or arrays) and any extra key parts."""
    h = hashlib.sha256()
    h.update(teacher_id.encode())
    h.update(json.dumps(extra or {}, sort_keys=True).encode())
    for item in inputs:
        if isinstance(item, str):
            h.update(b"s" + item.encode())
        else:
            arr = np.ascontiguousarray(item.numpy() if isinstance(item, torch.Tensor) else item)
            h.update(b"a" + str(arr.shape).encode() + str(arr.dtype).encode() + arr.tobytes())
    return h.hexdigest()


class TeacherCache:
    """Runs a frozen teacher at most once per cache key; later calls read the stored tensor."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.encoder_calls = 0

    def path_for(self, key: str) -> Path:
        return self.root / "teachers" / f"{key[:24]}.pt"

    def embeddings(self, teacher, inputs: Sequence[Any], extra: dict | None = None) -> tuple[torch.Tensor, str]:
        key = content_hash(teacher.id, inputs, extra)
        path = self.path_for(key)
        if path.exists():
            try:
                emb = torch.load(path, map_location="cpu")
                if not isinstance(emb, torch.Tensor) or emb.shape[0] != len(inputs) or not torch.isfinite(emb).all():
                    raise ValueError(
                        f"holds {type(emb).__name__} {list(getattr(emb, 'shape', []))}, expected {len(inputs)} finite rows"
                    )
                return emb, key
            except Exception as e:  # a corrupt or truncated entry is never used: rebuilt
                print(
                    f"teacher cache entry {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                    "rebuilding it",
                    file=sys.stderr,
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        with _folder_lock(path.parent):  # processes starting together encode once; the others wait and read it
            if path.exists() and _readable(path, len(inputs)):
                return torch.load(path, map_location="cpu"), key
            with torch.no_grad():
                emb = teacher.encode(list(inputs)).float().cpu()
            self.encoder_calls += 1
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(emb, tmp)
            os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache entry
        return emb, key


@contextlib.contextmanager
def _folder_lock(folder: Path):
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _readable(path: Path, rows: int) -> bool:
    try:
        emb = torch.load(path, map_location="cpu")
        return isinstance(emb, torch.Tensor) and emb.shape[0] == rows and bool(torch.isfinite(emb).all())
    except Exception:
        return False
