"""Your own images: torchvision's ImageFolder layout (DATA_DIR/train/<class>/*.png|jpg, DATA_DIR/test/<class>/...,
optionally DATA_DIR/val/<class>/...), with the CIFAR-100 protocol: a text teacher over the class names (the
folder names, `_` read as a space), the same augmentation, top-1, cross-modal matching and t-SNE. Without a
val/ folder, validation is a stratified `val_fraction` of train. Images are resized to `image_size` squares
once, at load, and kept as uint8 tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.registry import TASKS, UsageError
from benchmark.task import Split, TaskData
from tasks.image import ImageClassification


def read_folder(root: Path, size: int, classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images [N, size, size, 3] uint8 and labels of one split folder (torchvision's ImageFolder reads it)."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(str(root))
    except (FileNotFoundError, OSError) as e:
        raise UsageError(f"imagefolder: {root}: {e}") from None
    if classes is not None and ds.classes != classes:
        raise UsageError(
            f"imagefolder: {root} has classes {ds.classes[:5]}... but train/ has {classes[:5]}...; "
            "every split needs the same class folders"
        )
    xs = np.empty((len(ds.samples), size, size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(ds.samples):
        try:
            with Image.open(path) as img:
                xs[i] = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))
        except OSError as e:
            raise UsageError(f"imagefolder: {path} cannot be decoded ({e})") from None
    return xs, np.asarray(ds.targets, dtype=np.int64), list(ds.classes)


@TASKS.register(
    "imagefolder",
    "your images in ImageFolder layout (train/test[/val] of class folders), text teacher "
    "over the class names; top-1 and matching",
)
class ImageFolderTask(ImageClassification):
    name = "imagefolder"
    data_folder = None  # --data-dir is required: the user's own folder
    profile_notes = {
        "smoke": "seconds per method: 1 epoch at 32x32, ResNet8-w16 (tests)",
        "quick": "ResNet8-w16 at 32x32, 10 epochs",
    }
    profiles = {
        "smoke": dict(
            student="resnet8_w16",
            teacher="minilm",
            image_size=32,
            epochs=1,
            batch_size=16,
            lr=0.05,
            val_fraction=0.2,
            schedule="onecycle",
            weight_decay=5e-4,
        ),
        "quick": dict(
            student="resnet8_w16",
            teacher="minilm",
            image_size=32,
            epochs=10,
            batch_size=64,
            lr=0.05,
            val_fraction=0.1,
            schedule="onecycle",
            weight_decay=5e-4,
            nesterov=True,
        ),
    }

    def read(self, cfg):
        key = (cfg.data_dir, cfg.image_size)
        if getattr(self, "_read", (None,))[0] != key:  # decoded once per folder and size
            self._read = (key, self._decode(cfg))
        return self._read[1]

    def _decode(self, cfg):
        root = Path(cfg.data_dir).expanduser()
        if not cfg.data_dir or not (root / "train").is_dir() or not (root / "test").is_dir():
            raise UsageError(
                f"imagefolder: --data-dir must hold train/ and test/ folders of class subfolders (got '{cfg.data_dir}')"
            )
        xtr, ytr, names = read_folder(root / "train", cfg.image_size)
        xte, yte, _ = read_folder(root / "test", cfg.image_size, names)
        self.val = read_folder(root / "val", cfg.image_size, names) if (root / "val").is_dir() else None
        x = xtr.reshape(-1, 3).astype(np.float64) / 255  # per-channel statistics of the training images
        self.mean, self.std = tuple(map(float, x.mean(0))), tuple(map(float, np.maximum(x.std(0), 1e-3)))
        layout = "ImageFolder train/test" + ("/val" if self.val else f" (val: stratified {cfg.val_fraction:g} of train)")
        return xtr, ytr, xte, yte, names, None, {"data_layout": layout, "data_source": str(root)}

    def load(self, cfg) -> TaskData:
        data = super().load(cfg)
        if self.val is None:
            return data
        xtr, ytr, _, _, _, _, _ = self.read(cfg)  # the given val/ folder instead of a split of train

        def split(x, y):
            import torch

            yy = torch.from_numpy(y)
            return Split(torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous(), yy, yy.clone())

        xv, yv, _ = self.val
        rule = "the given train/val/test folders"
        if cfg.data_fraction < 1:  # the same stratified share of train/ as without a val/ folder
            from sklearn.model_selection import train_test_split

            if round(cfg.data_fraction * len(ytr)) < len(names := np.unique(ytr)):
                raise UsageError(
                    f"data_fraction={cfg.data_fraction} leaves fewer than one training image per class "
                    f"({len(names)} classes, {len(ytr)} images in train/)"
                )
            keep, _ = train_test_split(
                np.arange(len(ytr)), train_size=cfg.data_fraction, stratify=ytr, random_state=cfg.split_seed
            )
            keep = np.sort(keep)
            xtr, ytr = xtr[keep], ytr[keep]
            rule += f"; a stratified {cfg.data_fraction:g} of train/ (seed {cfg.split_seed})"
        data.train, data.val = split(xtr, ytr), split(xv, yv)
        data.info.update(n_train=len(ytr), n_val=len(yv), split_rule=rule)
        return data
