"""Your own paired data of two modalities, one file per split: DATA_DIR/train.npz, DATA_DIR/test.npz and
optionally DATA_DIR/val.npz (else a stratified `val_fraction` of train), each holding

    x                  the student's inputs: float vectors [N, d], or uint8 images [N, 3, H, W]
    y                  int labels [N] (0..K-1)
    teacher_embedding  the frozen teacher's embedding of each sample [N, d_T] (precomputed), or
    teacher_x          the teacher modality's inputs [N, d] for a registered vector teacher that the harness
                       trains on the training split (--teacher mlp-teacher)
    teacher_logits     optional [N, K]; else a logistic-regression probe on the training embeddings gives them
    class_names        optional [K] strings

Evaluation as the synthetic task: top-1, cross-modal matching against the per-sample teacher table, t-SNE."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmark.registry import TASKS, TEACHERS, UsageError
from benchmark.task import Split, TaskData
from benchmark.teacher_tables import TeacherTables
from benchmark.teachers import TeacherOptions, build_teacher, teacher_class
from tasks.synthetic import Synthetic


class Precomputed:
    """Not a network: the teacher embeddings stored in the paired task's files."""

    modality = "precomputed"

    def __init__(self, options=None):
        raise UsageError("teacher 'precomputed' is read from the paired task's files (teacher_embedding)")


TEACHERS.add("precomputed", Precomputed, "the teacher embeddings stored in your files (paired task)")


@dataclass
class PairedData(TaskData):
    teacher_embedding: torch.Tensor | None = None  # rows indexed by Split.key (train, then val, then test)
    teacher_logits: torch.Tensor | None = None
    teacher_x: torch.Tensor | None = None
    digest_hex: str = ""


def _load(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        head = f.read(4)
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):  # every .npz is a zip archive (an empty one: the second)
        raise UsageError(f"paired: {path} is not an .npz archive (numpy.savez writes a zip file; this one starts with {head!r})")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - a truncated zip, a bad header, a pickled object: all one message
        raise UsageError(f"paired: {path} cannot be read as .npz ({type(e).__name__}: {e})") from None


ROW_ARRAYS = ("x", "y", "teacher_embedding", "teacher_x", "teacher_logits")


def _validate(parts: dict[str, dict[str, np.ndarray]]) -> str:
    """Every file checked before anything is split or written: the arrays each split needs, one length per
    split, one width per array over the splits, integer labels from 0, finite numbers. Returns the teacher
    side ('teacher_embedding' or 'teacher_x')."""
    # one teacher side for every split: embeddings if any file has them (a file without them is then named)
    side = "teacher_embedding" if any("teacher_embedding" in p for p in parts.values()) else "teacher_x"
    for name, p in parts.items():
        missing = [k for k in ("x", "y", side) if k not in p]
        if missing:
            raise UsageError(
                f"paired: {name}.npz lacks {', '.join(missing)} (each split needs x, y and "
                "teacher_embedding, or teacher_x for a registered teacher)"
            )
        lengths = {k: len(p[k]) for k in ROW_ARRAYS if k in p}
        if len(set(lengths.values())) > 1:
            raise UsageError(
                f"paired: {name}.npz: its arrays differ in length ("
                + ", ".join(f"{k} {n}" for k, n in lengths.items())
                + "); one row per sample in each"
            )
        y = p["y"]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise UsageError(
                f"paired: {name}.npz: y must be integer class labels 0..K-1 of shape [N] (got {y.dtype} {list(y.shape)})"
            )
        if not len(y):
            raise UsageError(f"paired: {name}.npz has no rows; every split needs samples")
        if y.min() < 0:
            raise UsageError(
                f"paired: {name}.npz: y has negative labels ({', '.join(map(str, sorted(set(y[y < 0]))[:5]))}"
                f"; {int((y < 0).sum())} row(s)); classes are numbered 0..K-1"
            )
        for k in ROW_ARRAYS:
            if k in p and k != "y" and np.issubdtype(p[k].dtype, np.floating) and not np.isfinite(p[k]).all():
                bad = int((~np.isfinite(p[k])).reshape(len(p[k]), -1).any(1).sum())
                raise UsageError(f"paired: {name}.npz: {k} has NaN or infinite values in {bad} row(s)")
    known = set(parts["train"]["y"].tolist())
    for name, p in parts.items():  # a class the student never trained on cannot be scored (nor its logits sized)
        unseen = sorted(set(p["y"].tolist()) - known)
        if unseen:
            raise UsageError(
                f"paired: {name}.npz has labels that train.npz never has: "
                f"{', '.join(map(str, unseen[:10]))}{' ...' if len(unseen) > 10 else ''} "
                f"({int(np.isin(p['y'], unseen).sum())} row(s)); every class needs training rows"
            )
    for k in ROW_ARRAYS:
        shapes = {name: tuple(p[k].shape[1:]) for name, p in parts.items() if k in p and k != "y"}
        if len(set(shapes.values())) > 1:
            raise UsageError(
                f"paired: {k} has another width in each split ("
                + ", ".join(f"{n} {list(s)}" for n, s in shapes.items())
                + "); it must be the same"
            )
    return side


def _check_stratified_split(y: np.ndarray, fraction: float) -> None:
    """A validation split drawn from train.npz, stratified by class, needs two rows of every class and room for
    one row of each class on both sides; refused in one line naming the class, before anything is written."""
    classes, counts = np.unique(y, return_counts=True)
    few = classes[counts < 2]
    if len(few):
        raise UsageError(
            f"paired: train.npz has only one row of class {', '.join(map(str, few[:10]))}"
            f"{' ...' if len(few) > 10 else ''}: the validation split (val_fraction={fraction}, "
            "stratified) needs at least 2 rows per class; add rows or give a val.npz"
        )
    n_val = int(np.ceil(fraction * len(y)))
    if n_val < len(classes) or len(y) - n_val < len(classes):
        raise UsageError(
            f"paired: val_fraction={fraction} of train.npz's {len(y)} rows gives {n_val} validation and "
            f"{len(y) - n_val} training rows, too few for one row of each of its {len(classes)} classes "
            "on both sides; change val_fraction or give a val.npz"
        )


@TASKS.register(
    "paired", "your paired data (npz per split: student inputs, labels, teacher embeddings or teacher inputs); top-1 and matching"
)
class Paired(Synthetic):
    name = "paired"
    teacher_controls = ("shuffled", "class_mean", "label_smoothing")  # precomputed embeddings have no untrained form
    data_folder = None
    profile_notes = {
        "smoke": "seconds per method: 3 epochs, MLP student on vectors (tests)",
        "quick": "20 epochs, MLP student on vectors",
    }
    profiles = {
        "smoke": dict(
            student="mlp",
            teacher="precomputed",
            teacher_logits="own",
            epochs=3,
            batch_size=32,
            lr=0.02,
            val_fraction=0.2,
            schedule="onecycle",
            weight_decay=5e-4,
        ),
        "quick": dict(
            student="mlp",
            teacher="precomputed",
            teacher_logits="own",
            epochs=20,
            batch_size=64,
            lr=0.02,
            val_fraction=0.1,
            schedule="onecycle",
            weight_decay=5e-4,
            nesterov=True,
        ),
    }

    def load(self, cfg) -> TaskData:
        root = Path(cfg.data_dir).expanduser()
        if not cfg.data_dir or not (root / "train.npz").is_file() or not (root / "test.npz").is_file():
            raise UsageError(
                f"paired: --data-dir must hold train.npz and test.npz (and optionally val.npz); got '{cfg.data_dir}'"
            )
        parts = {"train": _load(root / "train.npz"), "test": _load(root / "test.npz")}
        if (root / "val.npz").is_file():
            parts["val"] = _load(root / "val.npz")
        side = _validate(parts)
        if "val" not in parts:
            from sklearn.model_selection import train_test_split

            tr = parts["train"]
            _check_stratified_split(tr["y"], cfg.val_fraction)
            idx_tr, idx_val = train_test_split(
                np.arange(len(tr["y"])), test_size=cfg.val_fraction, stratify=tr["y"], random_state=cfg.split_seed
            )
            parts["train"], parts["val"] = (
                {k: v[np.sort(i)] for k, v in tr.items() if k != "class_names"}
                | ({"class_names": tr["class_names"]} if "class_names" in tr else {})
                for i in (idx_tr, idx_val)
            )
        k = int(max(p["y"].max() for p in parts.values())) + 1
        names = (
            [str(n) for n in parts["train"]["class_names"]]
            if "class_names" in parts["train"]
            else [f"class {c}" for c in range(k)]
        )
        offset, splits, h = 0, [], hashlib.sha256()
        for name in ("train", "val", "test"):
            p = parts[name]
            x = torch.from_numpy(np.ascontiguousarray(p["x"]))
            x = x.float() if x.dtype != torch.uint8 else x
            n = len(p["y"])
            splits.append(Split(x, torch.from_numpy(p["y"].astype(np.int64)), torch.arange(offset, offset + n)))
            offset += n
            for key in ("x", "y", side):
                h.update(np.ascontiguousarray(p[key]).tobytes())

        def cat(key):
            return (
                torch.from_numpy(np.concatenate([parts[s][key] for s in ("train", "val", "test")])).float()
                if all(key in parts[s] for s in ("train", "val", "test"))
                else None
            )

        info = {
            "n_train": len(splits[0].y),
            "n_val": len(splits[1].y),
            "n_test": len(splits[2].y),
            "data_layout": f"paired npz ({side})",
            "data_source": str(root),
            "split_rule": "the given val.npz"
            if (root / "val.npz").is_file()
            else f"stratified {cfg.val_fraction:g} of train.npz (seed {cfg.split_seed})",
        }
        return PairedData(
            *splits,
            names,
            k,
            info,
            teacher_embedding=cat("teacher_embedding"),
            teacher_logits=cat("teacher_logits"),
            teacher_x=cat("teacher_x"),
            digest_hex=h.hexdigest(),
        )

    def teacher_tables(self, cfg, data: PairedData, cache) -> TeacherTables:
        n_train = len(data.train.y)
        if data.teacher_embedding is not None:
            if cfg.teacher != "precomputed":
                raise UsageError(
                    f"paired: the files hold precomputed teacher embeddings; use --teacher precomputed (not {cfg.teacher})"
                )
            emb, tid, key = data.teacher_embedding, f"precomputed/{data.digest_hex[:12]}", data.digest_hex
        else:
            if getattr(teacher_class(cfg.teacher), "modality", "") != "vector":
                raise UsageError(
                    f"paired: teacher_x needs a vector teacher the harness trains (mlp-teacher), not '{cfg.teacher}'"
                )
            teacher = build_teacher(cfg.teacher, TeacherOptions(train_labels=tuple(int(v) for v in data.train.y)))
            rows = list(data.teacher_x[:n_train].numpy()) + list(data.teacher_x.numpy())
            out, key = cache.embeddings(teacher, rows, extra={"train_labels": data.train.y.tolist()})
            out = out[n_train:]
            emb, tid = out[:, : teacher.dim], teacher.id
            if data.teacher_logits is None:
                data.teacher_logits = out[:, teacher.dim :]
        logits = data.teacher_logits if data.teacher_logits is not None else _probe(emb, data.train)
        acc = {
            f"teacher_{s}_acc": round((logits[sp.key].argmax(1) == sp.y).float().mean().item() * 100, 2)
            for s, sp in (("train", data.train), ("test", data.test))
        }
        params = {
            "teacher_id": tid,
            "teacher_cache_key": key,
            **acc,
            "teacher_logits_source": "file" if data.teacher_logits is not None else "probe (logistic regression)",
            "teacher_norm_mean": round(emb.norm(dim=-1).mean().item(), 4),
        }
        return TeacherTables(tid, key, emb.unsqueeze(1), logits.float().unsqueeze(1), params)

    def data_for_seed(self, cfg, data, tables, cache):
        return data, tables

    def augment(self, x, gen, train, cfg):
        if x.dtype == torch.uint8:  # images: [0, 1] then per-batch standardisation of the channels
            x = x.float().div_(255.0)
            return (x - 0.5) / 0.25
        return x.float()

    def evaluate(self, ev, split):
        sp = getattr(ev.data, split)
        if sp.x.dtype == torch.uint8:
            sp = Split(self.augment(sp.x, None, False, ev.cfg), sp.y, sp.key)
            ev = type(ev)(**{**ev.__dict__, "data": _with(ev.data, split, sp)})
        return super().evaluate(ev, split)


def _with(data, split, sp):
    from dataclasses import replace

    return replace(data, **{split: sp})


def _probe(emb: torch.Tensor, train: Split) -> torch.Tensor:
    """Teacher logits from a logistic regression fitted on the training rows' embeddings (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=1000).fit(emb[train.key].numpy(), train.y.numpy())
    full = np.full((len(emb), int(train.y.max()) + 1), -1e4, dtype=np.float32)
    full[:, clf.classes_] = (
        clf.decision_function(emb.numpy())
        if len(clf.classes_) > 2
        else np.stack([-clf.decision_function(emb.numpy()), clf.decision_function(emb.numpy())], 1)
    )
    return torch.from_numpy(full)
