"""Tiny-ImageNet (CS231n) with the same frozen text teacher as CIFAR-100: the paper's Table 9.

Reads the official archive layout from --data-dir: a zip of it (the full official archive with 500
training images per class, or any subset with the same layout), or the extracted `tiny-imagenet-200/`
folder; with neither, it downloads the official archive there. Labels follow `wnids.txt` order, class names
are the first synonym in `words.txt`, validation labels come from `val/val_annotations.txt`; greyscale
JPEGs become RGB. The official (labelled) val set is the test set, as in the literature; a stratified
validation split is carved from train, as for CIFAR-100.

JPEGs are decoded once: the uint8 arrays are stored under the cache root (`--cache-dir`, default
~/.cache/xkd-bench/data), keyed by the source's content hash, written whole or not at all.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from benchmark.datasets import _complete
from benchmark.registry import TASKS, UsageError, register_dataset
from benchmark.teacher_cache import default_cache_dir
from tasks.image import ImageClassification

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"  # of the official archive, as the loaders that download it check
ROOT = "tiny-imagenet-200"
OFFICIAL_TRAIN_PER_CLASS = 500
LAYOUT = f"{ROOT}/{{wnids.txt, words.txt, train/<wnid>/images/<wnid>_<i>.JPEG, val/images/*.JPEG, val/val_annotations.txt}}"


class _Zip:
    def __init__(self, path: Path):
        self.path, self.z = path, zipfile.ZipFile(path)
        self.names = set(self.z.namelist())

    def read(self, rel: str) -> bytes:
        return self.z.read(f"{ROOT}/{rel}")

    def list(self, prefix: str) -> list[str]:
        p = f"{ROOT}/{prefix}"
        return [n[len(ROOT) + 1 :] for n in self.names if n.startswith(p) and not n.endswith("/")]

    def digest(self) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        return h.hexdigest()


class _Folder:
    def __init__(self, path: Path):
        self.path = path

    def read(self, rel: str) -> bytes:
        return (self.path / rel).read_bytes()

    def list(self, prefix: str) -> list[str]:
        base = self.path / prefix
        return [str(p.relative_to(self.path)) for p in base.rglob("*") if p.is_file()] if base.exists() else []

    def digest(self) -> str:
        """Every file's path and size, and the text files' contents (decoding every image to hash it would
        cost what the cache saves)."""
        h = hashlib.sha256()
        for p in sorted(self.path.rglob("*")):
            if p.is_file():
                h.update(f"{p.relative_to(self.path)}:{p.stat().st_size}".encode())
                if p.suffix == ".txt":
                    h.update(p.read_bytes())
        return h.hexdigest()


def _is_layout_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return f"{ROOT}/wnids.txt" in z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def locate(data_dir: Path):
    """The source in data_dir: a zip of the layout, the extracted folder, or data_dir being either."""
    if data_dir.is_file():
        if not zipfile.is_zipfile(data_dir):
            raise UsageError(f"{data_dir} is not a zip archive (expected {LAYOUT})")
        return _Zip(data_dir)
    if (data_dir / "wnids.txt").is_file():
        return _Folder(data_dir)
    if (data_dir / ROOT / "wnids.txt").is_file():
        return _Folder(data_dir / ROOT)
    zips = sorted(data_dir.glob("*.zip"), key=lambda p: (p.name != f"{ROOT}.zip", p.name)) if data_dir.is_dir() else []
    for z in zips:
        if _is_layout_zip(z):
            return _Zip(z)
    if zips:
        raise UsageError(
            f"no zip in {data_dir} holds {ROOT}/wnids.txt ({', '.join(z.name for z in zips)} checked; "
            f"a truncated or corrupt archive reads as none)"
        )
    return None


def download(data_dir: Path) -> _Zip:
    """The official archive into data_dir (a temporary file, renamed when complete and verified)."""
    created = not data_dir.exists()
    target = data_dir / f"{ROOT}.zip"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        md5 = hashlib.md5()
        with tempfile.NamedTemporaryFile(dir=data_dir, suffix=".part", delete=False) as tmp:
            print(f"downloading {URL} to {target} (about 237 MB)", file=sys.stderr, flush=True)
            with urllib.request.urlopen(URL, timeout=60) as r:
                for block in iter(lambda: r.read(1 << 22), b""):
                    tmp.write(block), md5.update(block)
        if md5.hexdigest() != MD5:
            raise ValueError(f"md5 {md5.hexdigest()}, expected {MD5}")
        with zipfile.ZipFile(tmp.name) as z:
            bad = z.testzip()
            if bad is not None or f"{ROOT}/wnids.txt" not in z.namelist():
                raise ValueError(f"the downloaded archive is damaged ({bad or 'no wnids.txt'})")
        os.replace(tmp.name, target)
    except Exception as e:
        Path(getattr(locals().get("tmp"), "name", "/nonexistent")).unlink(missing_ok=True)
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise UsageError(
            f"Tiny-ImageNet not found in '{data_dir}' (expected a zip of {LAYOUT}, or the extracted "
            f"folder) and the download of {URL} failed: {type(e).__name__}: {e}"
        ) from None
    return _Zip(target)


def _decode(src, rel: str) -> np.ndarray:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(src.read(rel)))
        img = np.asarray(img.convert("RGB"))
    except Exception as e:
        raise UsageError(f"{rel} in {src.path} cannot be decoded: {type(e).__name__}: {e}") from None
    if img.shape != (64, 64, 3):
        raise UsageError(f"{rel} in {src.path} is {img.shape[1]}x{img.shape[0]}, expected 64x64")
    return img


def _index(name: str) -> int:
    m = re.search(r"_(\d+)\.JPEG$", name)
    return int(m.group(1)) if m else -1


def decode_all(src) -> dict[str, np.ndarray]:
    try:
        wnids = src.read("wnids.txt").decode().split()
        words = dict(line.split("\t", 1) for line in src.read("words.txt").decode().splitlines() if "\t" in line)
        ann = [line.split("\t")[:2] for line in src.read("val/val_annotations.txt").decode().splitlines() if line.strip()]
    except (KeyError, FileNotFoundError, UnicodeDecodeError, zipfile.BadZipFile, OSError) as e:
        raise UsageError(f"{src.path} does not hold the Tiny-ImageNet layout ({LAYOUT}): {type(e).__name__}: {e}") from None
    if not wnids:
        raise UsageError(f"{src.path}: wnids.txt names no class")
    missing = [w for w in wnids if w not in words]
    if missing:
        raise UsageError(f"{src.path}: words.txt has no name for {', '.join(missing[:3])}")
    label = {w: i for i, w in enumerate(wnids)}
    train = []
    for w in wnids:
        files = sorted((f for f in src.list(f"train/{w}/images/") if f.endswith(".JPEG")), key=_index)
        if not files:
            raise UsageError(f"{src.path}: no training images for class {w} (train/{w}/images/)")
        train += [(f, label[w]) for f in files]
    bad = [w for _, w in ann if w not in label]
    if bad:
        raise UsageError(f"{src.path}: val_annotations.txt names classes outside wnids.txt ({bad[0]})")
    test = [(f"val/images/{f}", label[w]) for f, w in ann]
    arrays = {}
    for split, items in (("train", train), ("test", test)):
        arrays[f"x_{split}"] = np.stack([_decode(src, f) for f, _ in items])
        arrays[f"y_{split}"] = np.asarray([y for _, y in items], dtype=np.int64)
    arrays["wnids"] = np.asarray(wnids)
    arrays["class_names"] = np.asarray([words[w].split(",")[0].strip() for w in wnids])
    return arrays


def read_tinyimagenet(data_dir: str, cache_root: Path | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """The decoded arrays (from the cache when present) and facts about them for the run's params."""
    d = Path(data_dir).expanduser()
    src = locate(d) or download(d)
    t0 = time.perf_counter()
    digest = src.digest()
    cache = (cache_root or default_cache_dir()) / "data" / f"tinyimagenet-{digest[:16]}"
    arrays = None
    if (cache / "done.json").is_file():
        try:
            arrays = {k: np.load(cache / f"{k}.npy") for k in ("x_train", "y_train", "x_test", "y_test", "wnids", "class_names")}
            source = "decoded-array cache"
        except Exception as e:  # unreadable: rebuilt, never used
            print(f"decoded Tiny-ImageNet cache {cache} is unreadable ({type(e).__name__}); rebuilding it", file=sys.stderr)
            arrays = None
    if arrays is None:
        arrays = decode_all(src)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}.tmp"))
        try:
            for k, v in arrays.items():
                np.save(tmp / f"{k}.npy", v)
            (tmp / "done.json").write_text(json.dumps({"source": str(getattr(src, "path", "")), "sha256": digest}))
            shutil.rmtree(cache, ignore_errors=True)
            os.replace(tmp, cache)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        source = "decoded JPEGs (now cached)"
    per_class = np.bincount(arrays["y_train"], minlength=len(arrays["wnids"]))
    info = {
        "data_layout": f"tiny-imagenet {'zip' if isinstance(src, _Zip) else 'folder'}",
        "data_source_sha256": digest,
        "data_load": source,
        "data_load_s": round(time.perf_counter() - t0, 2),
        "train_images_per_class": int(per_class.min())
        if per_class.min() == per_class.max()
        else f"{per_class.min()}-{per_class.max()}",
    }
    if per_class.max() < OFFICIAL_TRAIN_PER_CLASS:
        info["data_subset"] = f"{per_class.min()} of the official {OFFICIAL_TRAIN_PER_CLASS} training images per class"
    return arrays, info


@TASKS.register("tinyimagenet", "Tiny-ImageNet (200 classes, 64x64), text teacher over the class names; top-1 and matching")
class TinyImageNet(ImageClassification):
    """The CIFAR-100 protocol (teacher tables, augmentation, evaluation) on Tiny-ImageNet's images."""

    name = "tinyimagenet"
    data_folder = "tiny-imagenet"
    mean = (0.4802, 0.4481, 0.3975)
    std = (0.2770, 0.2691, 0.2821)
    profile_notes = {
        "smoke": "seconds per method: 5% of each class, 1 epoch, ResNet8-w16 at 32x32 (tests, CI)",
        "quick": "CPU: ResNet8-w16 at 32x32 (downsampled from 64x64: 4x cheaper a step), 4 epochs; measured on 2 "
        "cores with 100 training images per class: 57-86 s a run (13 methods, 3 seeds each)",
        "paper": "the paper's recipe as for CIFAR-100: ResNet34, input upsampled to 224, SGD 0.1 x0.1/30 ep, 90 "
        "epochs, batch 32, wd 1e-4, CLIP ViT-B/16 teacher; the full archive (500 per class); GPU",
    }
    profiles = {
        "smoke": dict(
            student="resnet8_w16",
            image_size=32,
            epochs=1,
            batch_size=64,
            lr=0.05,
            data_fraction=0.05,
            val_fraction=0.1,
            test_limit=1000,
            schedule="onecycle",
            weight_decay=5e-4,
        ),
        "quick": dict(
            student="resnet8_w16",
            image_size=32,
            epochs=4,
            batch_size=128,
            lr=0.1,
            val_fraction=0.1,
            schedule="onecycle",
            weight_decay=5e-4,
            nesterov=True,
        ),
        "paper": dict(
            student="resnet34",
            teacher="clip-vit-b16",
            image_size=224,
            epochs=90,
            batch_size=32,
            lr=0.1,
            momentum=0.9,
            weight_decay=1e-4,
            schedule="step",
            lr_step_epochs=30,
            lr_gamma=0.1,
        ),
    }

    def read(self, cfg):
        a, info = read_tinyimagenet(cfg.data_dir)
        return (a["x_train"], a["y_train"], a["x_test"], a["y_test"], [str(n) for n in a["class_names"]], None, info)


@register_dataset("tinyimagenet", "tiny-imagenet", "Tiny-ImageNet 200 (CS231n archive)")
def fetch_tinyimagenet(root: Path) -> Path:
    return _complete(root / "tiny-imagenet", download)  # md5 and every member's CRC checked
