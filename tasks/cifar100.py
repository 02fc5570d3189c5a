"""CIFAR-100 with a frozen text teacher (CLIP prompt templates x class names), as in the paper's Sec. 4.2."""
from __future__ import annotations

import json
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from benchmark.datasets import _complete
from benchmark.evaluation import feature_dump, student_in_teacher_space, teacher_in_shared_space
from benchmark.registry import TASKS, UsageError, register_dataset
from benchmark.task import Split, Task, TaskData
from benchmark.teacher_tables import TeacherTables, class_prototypes, linear_probe_logits, zeroshot_logits
from benchmark.teachers import build_teacher


def prompt_templates() -> list:
    """CLIP's 80 ImageNet prompt templates, as shipped by open_clip."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    return list(OPENAI_IMAGENET_TEMPLATES)


def _read_npz(d: Path):
    path, meta_path = d / "cifar100_uint8.npz", d / "meta.json"
    if not meta_path.is_file():
        raise UsageError(f"{meta_path} is missing (it names the classes of {path.name})")
    try:
        meta = json.loads(meta_path.read_text())
        names, f2c, coarse = meta["fine_label_names"], np.asarray(meta["fine_to_coarse"]), meta["coarse_label_names"]
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{meta_path} is not valid: {type(e).__name__}: {e} (needs fine_label_names, fine_to_coarse, "
                         "coarse_label_names)") from None
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
        raise UsageError(f"{path}: the training labels cover {len(np.unique(a['y_train']))} classes but meta.json "
                         f"names {num_classes}")


def _read_torchvision(d: Path):
    from torchvision.datasets import CIFAR100
    tr, te = CIFAR100(str(d), train=True, download=False), CIFAR100(str(d), train=False, download=False)
    with open(d / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    with open(d / "cifar-100-python" / "meta", "rb") as f:
        coarse_names = pickle.load(f, encoding="latin1")["coarse_label_names"]
    f2c = np.zeros(100, dtype=np.int64)
    f2c[np.asarray(raw["fine_labels"])] = np.asarray(raw["coarse_labels"])
    return (tr.data, np.asarray(tr.targets), te.data, np.asarray(te.targets), tr.classes, f2c, coarse_names,
            "torchvision cifar-100-python")


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
        raise UsageError(f"CIFAR-100 not found in '{d}' (expected cifar100_uint8.npz + meta.json, or "
                         f"cifar-100-python/) and the torchvision download failed: {type(e).__name__}: {e}; give the "
                         "folder that holds it with --data-dir (or set XKD_DATA to the data root), or fetch it once "
                         "on a machine with a network: python -m benchmark data fetch cifar100") from None
    return _read_torchvision(d)


def random_crop(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Independent random crop per image with batched indexing (no per-image loop)."""
    b, _, h, w = x.shape
    oy = torch.randint(0, h - size + 1, (b,), generator=gen).to(x.device)
    ox = torch.randint(0, w - size + 1, (b,), generator=gen).to(x.device)
    ar = torch.arange(size, device=x.device)
    rows, cols = (oy[:, None] + ar)[:, :, None], (ox[:, None] + ar)[:, None, :]
    return x.permute(0, 2, 3, 1)[torch.arange(b, device=x.device)[:, None, None], rows, cols].permute(0, 3, 1, 2)


def _stratified_head(y: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    per = max(1, n // num_classes)
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:per] for c in range(num_classes)]))


@TASKS.register("cifar100", "CIFAR-100 image classification, text teacher (prompts x class names); top-1 and matching")
class Cifar100(Task):
    name = "cifar100"
    # the paper's full method as its Table 7 reports it (classifier-level distillation, its best row)
    data_folder = "cifar100"  # under the data root when --data-dir is not given
    profile_notes = {"smoke": "seconds per method: 4% of each class, 1 epoch, ResNet8-w16 (tests, CI)",
                     "quick": "CPU default: the full training set, ResNet8-w16, 4 epochs (measured on 2 cores: 131-138 s "
                              "a baseline run, 137 s an ours_classifier run; the 14 methods about 40 min a seed)",
                     "paper": "the paper's recipe: ResNet18, 224x224, SGD 0.1 x0.1/30 ep, 90 epochs, batch 32, "
                              "wd 1e-4, CLIP ViT-B/16 teacher; GPU"}
    profiles = {
        "smoke": dict(student="resnet8_w16", epochs=1, batch_size=64, lr=0.05, data_fraction=0.04,
                      val_fraction=0.02, test_limit=1000, schedule="onecycle", weight_decay=5e-4),
        "quick": dict(student="resnet8_w16", epochs=4, batch_size=128, lr=0.1, schedule="onecycle",
                      weight_decay=5e-4, nesterov=True),
        "paper": dict(student="resnet18", teacher="clip-vit-b16", image_size=224, epochs=90, batch_size=32, lr=0.1, momentum=0.9,
                      weight_decay=1e-4, schedule="step", lr_step_epochs=30, lr_gamma=0.1),
    }
    margins = {"resnet34": 0.04, "cifar_resnet34": 0.04}  # r^2: 0.2^2 for R34, 0.3^2 otherwise (Sec 4.2.1)
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)  # per-channel training-set statistics

    def hparam_defaults(self, cfg):
        return {"feat_dist": "l2sq_norm_sum", "margin": self.margins.get(cfg.student, 0.09), "beta": 1.0, "ccl_tau": 0.1}

    def read(self, cfg):
        """(x_train, y_train, x_test, y_test, class names, a group per class or None, facts for the params)."""
        xtr, ytr, xte, yte, names, f2c, _, layout = read_cifar100(cfg.data_dir)
        return xtr, ytr, xte, yte, names, f2c, {"data_layout": layout}

    def load(self, cfg) -> TaskData:
        xtr, ytr, xte, yte, names, groups, facts = self.read(cfg)
        ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
        k = len(names)
        n_val = round(cfg.val_fraction * len(ytr))
        n_train = round(cfg.data_fraction * (len(ytr) - n_val))
        for what, n in (("val_fraction", n_val), ("data_fraction", n_train)):
            if n < k:  # a stratified split needs one image of each class on each side
                raise UsageError(f"{what}={getattr(cfg, what)} leaves {n} images for {k} classes; a stratified "
                                 f"split needs at least one per class")
        idx_tr, idx_val = train_test_split(np.arange(len(ytr)), test_size=cfg.val_fraction, stratify=ytr,
                                           random_state=cfg.split_seed)
        if cfg.data_fraction < 1:
            idx_tr, _ = train_test_split(idx_tr, train_size=cfg.data_fraction, stratify=ytr[idx_tr],
                                         random_state=cfg.split_seed)
        idx_tr, idx_val = np.sort(idx_tr), np.sort(idx_val)
        idx_te = _stratified_head(yte, cfg.test_limit, k) if cfg.test_limit else np.arange(len(yte))

        def split(x, y, idx):
            yy = torch.from_numpy(y[idx])
            return Split(torch.from_numpy(np.ascontiguousarray(x[idx])).permute(0, 3, 1, 2).contiguous(), yy, yy.clone())

        info = {**facts, "n_train": len(idx_tr), "n_val": len(idx_val), "n_test": len(idx_te),
                "split_rule": f"stratified {cfg.val_fraction:g} of train as validation (seed {cfg.split_seed})"}
        return TaskData(split(xtr, ytr, idx_tr), split(xtr, ytr, idx_val), split(xte, yte, idx_te),
                        [n.replace("_", " ") for n in names], k, info,
                        class_groups=None if groups is None else torch.from_numpy(np.asarray(groups)))

    def teacher_tables(self, cfg, data: TaskData, cache) -> TeacherTables:
        if cfg.teacher_logits not in ("zeroshot", "probe"):
            raise UsageError(f"{self.name}: teacher_logits must be zeroshot or probe (a text teacher has no classifier)")
        teacher = build_teacher(cfg.teacher)
        templates = prompt_templates()
        prompts = [t(c) for c in data.class_names for t in templates]
        emb, key = cache.embeddings(teacher, prompts)
        emb = emb.reshape(data.num_classes, len(templates), -1)
        params = {"teacher_id": teacher.id, "teacher_cache_key": key, "n_templates": len(templates),
                  "teacher_norm_mean": round(emb.norm(dim=-1).mean().item(), 4)}
        if cfg.teacher_logits == "zeroshot":
            logits = zeroshot_logits(emb, cfg.zeroshot_scale)
        else:
            logits, acc = linear_probe_logits(emb, torch.arange(data.num_classes), data.num_classes)
            params["teacher_probe_train_acc"] = acc
        # the text teacher's own accuracy: each prompt's logits over the classes, argmax = its class
        params["teacher_prompt_top1"] = round((logits.argmax(-1) == torch.arange(data.num_classes)[:, None]).float()
                                              .mean().item() * 100, 2)
        single = [t("{}") for t in templates].index("a photo of a {}.")
        return TeacherTables(teacher.id, key, emb, logits, params | {"single_template_index": single})

    def augment(self, x, gen, train, cfg):
        x = x.float().div_(255.0)
        size = cfg.image_size
        if size != x.shape[-1]:  # the paper's Resize(256) -> (Random|Center)Crop(224) for 32x32 sources
            x = F.interpolate(x, size=round(size * 256 / 224), mode="bilinear", align_corners=False)
        if train:
            if size == x.shape[-1]:
                pad = size // 8  # 4 pixels at 32x32
                x = F.pad(x, (pad, pad, pad, pad))
            x = random_crop(x, size, gen)
            flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        elif size != x.shape[-1]:
            o = (x.shape[-1] - size) // 2
            x = x[..., o:o + size, o:o + size]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return x.contiguous(memory_format=torch.channels_last)

    def _predict(self, ev, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and embeddings of a whole split, in eval batches (CPU tensors)."""
        logits, emb = [], []
        for i in range(0, len(x), ev.cfg.eval_batch_size):
            out = ev.embed(self.augment(x[i:i + ev.cfg.eval_batch_size].to(ev.device), None, False, ev.cfg))
            logits.append(out.logits.float().cpu()), emb.append(out.embedding.float().cpu())
        return torch.cat(logits), torch.cat(emb)

    def evaluate(self, ev, split):
        data, method = ev.data, ev.method
        sp = getattr(data, split)
        logits, emb = self._predict(ev, sp.x)
        metrics = {f"{split}_top1": (logits.argmax(1) == sp.y).float().mean().item() * 100}
        if split != "test":
            return metrics, {}
        tables = ev.tables
        with torch.no_grad():
            e = tables.embedding.float()
            k, v, d = e.shape
            if ev.cfg.match_proto == "head_then_mean":
                proto = class_prototypes(method.teacher_features(e.reshape(k * v, d)).reshape(k, v, -1))
            else:
                proto = teacher_in_shared_space(method, e.mean(1))
            single = teacher_in_shared_space(method, e[:, tables.params["single_template_index"]])
            f_s = student_in_teacher_space(method, emb, ev.device)
            if f_s is None:
                metrics["match_acc"] = metrics["match_acc_single"] = float("nan")
            else:
                metrics["match_acc"] = ((f_s @ proto.t()).argmax(1).cpu() == sp.y).float().mean().item() * 100
                metrics["match_acc_single"] = ((f_s @ single.t()).argmax(1).cpu() == sp.y).float().mean().item() * 100
            # features of a fixed random subset for the t-SNE figure (Fig. 8 analogue)
            g = torch.Generator().manual_seed(0)
            pick = torch.randperm(len(sp.y), generator=g)[: ev.cfg.tsne_samples]
            tmpl = torch.randint(0, v, (len(pick),), generator=g)
            e_t = e[sp.key[pick].to(e.device), tmpl.to(e.device)]
            groups = sp.y[pick] if data.class_groups is None else data.class_groups[sp.y[pick]]
            arrays = feature_dump(method, e_t, emb[pick], sp.y[pick].numpy(), groups.numpy())
        return metrics, arrays


@register_dataset("cifar100", "cifar100", "CIFAR-100, official split (torchvision)")
def fetch_cifar100(root: Path) -> Path:
    def build(tmp: Path) -> None:
        try:
            from torchvision.datasets import CIFAR100
            CIFAR100(str(tmp), train=True, download=True)  # downloads and md5-checks the archive
        except Exception as e:
            raise UsageError(f"cifar100: the torchvision download (https://www.cs.toronto.edu/~kriz/"
                             f"cifar-100-python.tar.gz) failed ({type(e).__name__}: {e}); without a network, put "
                             "cifar-100-python/ or cifar100_uint8.npz + meta.json in the folder") from None
        (tmp / "cifar-100-python.tar.gz").unlink(missing_ok=True)
        xtr, ytr, xte, yte, names, f2c, coarse, _ = _read_torchvision(tmp)
        np.savez(tmp / "cifar100_uint8.npz", x_train=xtr, y_train=ytr.astype(np.int64), x_test=xte,
                 y_test=yte.astype(np.int64), fine_to_coarse=f2c)
        (tmp / "meta.json").write_text(json.dumps({"fine_label_names": list(names), "coarse_label_names": list(coarse),
                                                   "fine_to_coarse": f2c.tolist()}))
        read_cifar100(str(tmp))  # what the loader reads, checked
    return _complete(root / "cifar100", build)
