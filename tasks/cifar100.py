"""CIFAR-100 with a frozen text teacher (CLIP prompt templates x class names), as in the paper's Sec. 4.2."""

from __future__ import annotations

import json
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmark.datasets import _complete
from benchmark.registry import TASKS, UsageError, register_dataset
from tasks.image import ImageClassification

CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)  # per-channel training-set statistics


def cifar100_arrays(cfg):
    """CIFAR-100's arrays as ImageClassification.read gives them (the superclass of each class as its group)."""
    xtr, ytr, xte, yte, names, f2c, _, layout = read_cifar100(cfg.data_dir)
    return xtr, ytr, xte, yte, names, f2c, {"data_layout": layout}


def _read_npz(d: Path):
    path, meta_path = d / "cifar100_uint8.npz", d / "meta.json"
    if not meta_path.is_file():
        raise UsageError(f"{meta_path} is missing (it names the classes of {path.name})")
    try:
        meta = json.loads(meta_path.read_text())
        names, f2c, coarse = meta["fine_label_names"], np.asarray(meta["fine_to_coarse"]), meta["coarse_label_names"]
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(
            f"{meta_path} is not valid: {type(e).__name__}: {e} (needs fine_label_names, fine_to_coarse, coarse_label_names)"
        ) from None
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except Exception as e:  # truncated or corrupt archive, missing array
        raise UsageError(f"{path} cannot be read: {type(e).__name__}: {e}") from None
    check_arrays(path, arrays, len(names))
    return (arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], names, f2c, coarse, "npz")


def check_arrays(path: Path, a: dict, num_classes: int) -> None:
    """uint8 images [N, 32, 32, 3], one integer label per image, labels within the named classes."""
    for split in ("train", "test"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise UsageError(f"{path}: x_{split} must be uint8 [N, 32, 32, 3], got {x.dtype} {list(x.shape)}")
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise UsageError(f"{path}: y_{split} must hold one integer label per image ({len(x)}), got {y.dtype} {list(y.shape)}")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise UsageError(f"{path}: y_{split} has labels {y.min()}..{y.max()} but meta.json names {num_classes} classes")
    if len(np.unique(a["y_train"])) != num_classes:
        raise UsageError(
            f"{path}: the training labels cover {len(np.unique(a['y_train']))} classes but meta.json names {num_classes}"
        )


def _read_torchvision(d: Path):
    from torchvision.datasets import CIFAR100

    tr, te = CIFAR100(str(d), train=True, download=False), CIFAR100(str(d), train=False, download=False)
    with open(d / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    with open(d / "cifar-100-python" / "meta", "rb") as f:
        coarse_names = pickle.load(f, encoding="latin1")["coarse_label_names"]
    f2c = np.zeros(100, dtype=np.int64)
    f2c[np.asarray(raw["fine_labels"])] = np.asarray(raw["coarse_labels"])
    return (
        tr.data,
        np.asarray(tr.targets),
        te.data,
        np.asarray(te.targets),
        tr.classes,
        f2c,
        coarse_names,
        "torchvision cifar-100-python",
    )


def read_cifar100(data_dir: str):
    d = Path(data_dir).expanduser()
    if (d / "cifar100_uint8.npz").exists():
        return _read_npz(d)
    if (d / "cifar-100-python").exists():
        return _read_torchvision(d)
    # Neither layout: download with torchvision into a temporary folder, moved in only when complete.
    created = not d.exists()
    try:
        from torchvision.datasets import CIFAR100

        d.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=d) as tmp:
            CIFAR100(tmp, train=True, download=True)
            shutil.move(str(Path(tmp) / "cifar-100-python"), str(d / "cifar-100-python"))
    except Exception as e:
        if created:
            shutil.rmtree(d, ignore_errors=True)
        raise UsageError(
            f"CIFAR-100 not found in '{d}' (expected cifar100_uint8.npz + meta.json, or "
            f"cifar-100-python/) and the torchvision download failed: {type(e).__name__}: {e}; give the "
            "folder that holds it with --data-dir (or set XKD_DATA to the data root), or fetch it once "
            "on a machine with a network: python -m benchmark data fetch cifar100"
        ) from None
    return _read_torchvision(d)


@TASKS.register("cifar100", "CIFAR-100 image classification, text teacher (prompts x class names); top-1 and matching")
class Cifar100(ImageClassification):
    name = "cifar100"
    data_folder = "cifar100"  # under the data root when --data-dir is not given
    profile_notes = {
        "smoke": "seconds per method: 4% of each class, 1 epoch, ResNet8-w16 (tests, CI)",
        "quick": "CPU default: the full training set, ResNet8-w16, 4 epochs (measured on 2 cores: 131-138 s "
        "a baseline run, 137 s an ours_classifier run; the 14 methods about 40 min a seed)",
        "paper": "the paper's recipe: ResNet18, 224x224, SGD 0.1 x0.1/30 ep, 90 epochs, batch 32, "
        "wd 1e-4, CLIP ViT-B/16 teacher; GPU",
    }
    profiles = {
        "smoke": dict(
            student="resnet8_w16",
            epochs=1,
            batch_size=64,
            lr=0.05,
            data_fraction=0.04,
            val_fraction=0.02,
            test_limit=1000,
            schedule="onecycle",
            weight_decay=5e-4,
        ),
        "quick": dict(
            student="resnet8_w16", epochs=4, batch_size=128, lr=0.1, schedule="onecycle", weight_decay=5e-4, nesterov=True
        ),
        "paper": dict(
            student="resnet18",
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
    mean, std = CIFAR_MEAN, CIFAR_STD

    def read(self, cfg):
        return cifar100_arrays(cfg)


@register_dataset("cifar100", "cifar100", "CIFAR-100, official split (torchvision)")
def fetch_cifar100(root: Path) -> Path:
    def build(tmp: Path) -> None:
        try:
            from torchvision.datasets import CIFAR100

            CIFAR100(str(tmp), train=True, download=True)  # downloads and md5-checks the archive
        except Exception as e:
            raise UsageError(
                f"cifar100: the torchvision download (https://www.cs.toronto.edu/~kriz/"
                f"cifar-100-python.tar.gz) failed ({type(e).__name__}: {e}); without a network, put "
                "cifar-100-python/ or cifar100_uint8.npz + meta.json in the folder"
            ) from None
        (tmp / "cifar-100-python.tar.gz").unlink(missing_ok=True)
        xtr, ytr, xte, yte, names, f2c, coarse, _ = _read_torchvision(tmp)
        np.savez(
            tmp / "cifar100_uint8.npz",
            x_train=xtr,
            y_train=ytr.astype(np.int64),
            x_test=xte,
            y_test=yte.astype(np.int64),
            fine_to_coarse=f2c,
        )
        (tmp / "meta.json").write_text(
            json.dumps({"fine_label_names": list(names), "coarse_label_names": list(coarse), "fine_to_coarse": f2c.tolist()})
        )
        read_cifar100(str(tmp))  # what the loader reads, checked

    return _complete(root / "cifar100", build)
