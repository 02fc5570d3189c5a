"""The image-classification task the image tasks share (cifar100, tinyimagenet, imagefolder, cifar100-kd).

A subclass gives `read` (its arrays: train and test images as uint8 [N, H, W, 3], labels, class names) and its
per-channel `mean`/`std`; the base splits a stratified validation set off the training images, augments each
batch as the student sees it (pad-and-crop or the paper's resize-and-crop, flips), and, for a text teacher,
builds its tables from CLIP's prompt templates over the class names and reports top-1 and cross-modal matching.
A task with another teacher (cifar100-kd's image teacher) overrides `teacher_tables` and `evaluate`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from benchmark.evaluation import feature_dump, student_in_teacher_space, teacher_in_shared_space
from benchmark.registry import UsageError
from benchmark.task import Split, Task, TaskData
from benchmark.teacher_tables import TeacherTables, class_prototypes, linear_probe_logits, zeroshot_logits
from benchmark.teachers import build_teacher


def prompt_templates() -> list:
    """CLIP's 80 ImageNet prompt templates, as shipped by open_clip."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


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


class ImageClassification(Task):
    """Top-1 image classification with a frozen teacher; subclasses give `read`, `mean` and `std`."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    margins = {"resnet34": 0.04, "cifar_resnet34": 0.04}  # r^2: 0.2^2 for R34, 0.3^2 otherwise (Sec 4.2.1)

    def hparam_defaults(self, cfg):
        return {"feat_dist": "l2sq_norm_sum", "margin": self.margins.get(cfg.student, 0.09), "beta": 1.0, "ccl_tau": 0.1}

    def read(self, cfg):
        """(x_train, y_train, x_test, y_test, class names, a group per class or None, facts for the params)."""
        raise NotImplementedError

    def load(self, cfg) -> TaskData:
        xtr, ytr, xte, yte, names, groups, facts = self.read(cfg)
        ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
        k = len(names)
        n_val = round(cfg.val_fraction * len(ytr))
        n_train = round(cfg.data_fraction * (len(ytr) - n_val))
        for what, n in (("val_fraction", n_val), ("data_fraction", n_train)):
            if n < k:  # a stratified split needs one image of each class on each side
                raise UsageError(
                    f"{what}={getattr(cfg, what)} leaves {n} images for {k} classes; a stratified "
                    f"split needs at least one per class"
                )
        idx_tr, idx_val = train_test_split(
            np.arange(len(ytr)), test_size=cfg.val_fraction, stratify=ytr, random_state=cfg.split_seed
        )
        if cfg.data_fraction < 1:
            idx_tr, _ = train_test_split(idx_tr, train_size=cfg.data_fraction, stratify=ytr[idx_tr], random_state=cfg.split_seed)
        idx_tr, idx_val = np.sort(idx_tr), np.sort(idx_val)
        idx_te = _stratified_head(yte, cfg.test_limit, k) if cfg.test_limit else np.arange(len(yte))

        def split(x, y, idx):
            yy = torch.from_numpy(y[idx])
            return Split(torch.from_numpy(np.ascontiguousarray(x[idx])).permute(0, 3, 1, 2).contiguous(), yy, yy.clone())

        info = {
            **facts,
            "n_train": len(idx_tr),
            "n_val": len(idx_val),
            "n_test": len(idx_te),
            "split_rule": f"stratified {cfg.val_fraction:g} of train as validation (seed {cfg.split_seed})",
        }
        return TaskData(
            split(xtr, ytr, idx_tr),
            split(xtr, ytr, idx_val),
            split(xte, yte, idx_te),
            [n.replace("_", " ") for n in names],
            k,
            info,
            class_groups=None if groups is None else torch.from_numpy(np.asarray(groups)),
        )

    def teacher_tables(self, cfg, data: TaskData, cache) -> TeacherTables:
        if cfg.teacher_logits not in ("zeroshot", "probe"):
            raise UsageError(f"{self.name}: teacher_logits must be zeroshot or probe (a text teacher has no classifier)")
        teacher = build_teacher(cfg.teacher)
        templates = prompt_templates()
        prompts = [t(c) for c in data.class_names for t in templates]
        emb, key = cache.embeddings(teacher, prompts)
        emb = emb.reshape(data.num_classes, len(templates), -1)
        params = {
            "teacher_id": teacher.id,
            "teacher_cache_key": key,
            "n_templates": len(templates),
            "teacher_norm_mean": round(emb.norm(dim=-1).mean().item(), 4),
        }
        if cfg.teacher_logits == "zeroshot":
            logits = zeroshot_logits(emb, cfg.zeroshot_scale)
        else:
            logits, acc = linear_probe_logits(emb, torch.arange(data.num_classes), data.num_classes)
            params["teacher_probe_train_acc"] = acc
        # the text teacher's own accuracy: each prompt's logits over the classes, argmax = its class
        params["teacher_prompt_top1"] = round(
            (logits.argmax(-1) == torch.arange(data.num_classes)[:, None]).float().mean().item() * 100, 2
        )
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
            x = x[..., o : o + size, o : o + size]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return x.contiguous(memory_format=torch.channels_last)

    def _predict(self, ev, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and embeddings of a whole split, in eval batches (CPU tensors)."""
        logits, emb = [], []
        for i in range(0, len(x), ev.cfg.eval_batch_size):
            out = ev.embed(self.augment(x[i : i + ev.cfg.eval_batch_size].to(ev.device), None, False, ev.cfg))
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
