"""The paper path cannot rot unseen: each task's `paper` profile (its real student and input size) trains a
few steps and evaluates on CPU, in fp32 and under bf16 autocast, with the offline teacher in place of the
paper's (CLIP ViT-B/16 and IR-50 weights cannot be downloaded here), on a handful of real samples."""

import math
from dataclasses import replace

import pytest
import torch

from benchmark.resolve import build_config
from benchmark.task import Split
from benchmark.teacher_cache import TeacherCache
from benchmark.trainer import Context

METHODS = ["ours_classifier", "crd"]  # a projection head and shared classifier; memory banks with sample indices


def _few(split: Split, n: int) -> Split:
    """n samples, of distinct classes where the split has them (CRD draws its negatives from other classes)."""
    first = {}
    for i, c in enumerate(split.y.tolist()):
        first.setdefault(c, i)
        if len(first) == n:
            break
    keep = torch.tensor(sorted(first.values())[:n]) if len(first) >= n else torch.arange(min(n, len(split.y)))
    x = split.x[keep] if isinstance(split.x, torch.Tensor) else split.x
    return replace(split, x=x, y=split.y[keep], key=split.key[keep], trials=None)


def _steps(task, cfg, data, tables, method, n_steps=2):
    ctx = Context(cfg, task, data, tables, method, {})
    batches = task.epoch_batches(data.train, cfg.batch_size, ctx.gen)[:n_steps]
    for idx in batches:
        loss, terms, _ = ctx.train_step(idx)
        assert math.isfinite(loss.item()), (method, {k: v.item() for k, v in terms.items()})
    return ctx


# bf16 on a CPU without bf16 units is several times slower than fp32: each path once
@pytest.mark.parametrize("task_name,precision", [("cifar100", "bf16"), ("tinyimagenet", "fp32")])
def test_image_paper_profiles_train_and_evaluate(task_name, precision, cifar_dir, tmp_path):
    from benchmark.registry import TASKS

    task = TASKS.get(task_name)()
    if task_name == "cifar100":
        data_dir = cifar_dir
    else:
        from test_tinyimagenet import archive

        data_dir = archive().parent
    cfg = build_config(
        task,
        "paper",
        {"data_dir": str(data_dir), "teacher": "minilm"},
        {"batch_size": "2", "precision": precision, "test_limit": "200", "num_threads": "1"},
    )
    assert cfg.image_size == 224 and cfg.student in ("resnet18", "resnet34")
    full = task.load(cfg)
    data = replace(full, train=_few(full.train, 4), val=_few(full.val, 4), test=_few(full.test, 4))
    tables = task.teacher_tables(cfg, data, TeacherCache())
    for method in METHODS:
        ctx = _steps(task, cfg, data, tables, method)
        metrics, arrays = ctx.evaluate("test")
        assert 0 <= metrics["test_top1"] <= 100
        assert ctx.student(torch.zeros(1, 3, 224, 224)).embedding.shape[1] == ctx.student.embed_dim


def test_speaker_paper_profile_trains_and_evaluates(vox_dir):
    from tasks.voxceleb.task import VoxCeleb

    task = VoxCeleb()
    cfg = build_config(
        task,
        "paper",
        {"data_dir": str(vox_dir), "teacher": "dlib-face"},
        {
            "batch_size": "4",
            "precision": "bf16",
            "num_threads": "1",
            "eval_crops": "1",
            "eval_seconds": "0.5",
            "val_utts_per_speaker": "2",
            "val_trials_per_speaker": "1",
        },
    )
    assert cfg.student == "resnet34_asp"
    data = task.load(cfg)
    tables = task.teacher_tables(cfg, data, TeacherCache())
    for method in METHODS:
        ctx = _steps(task, cfg, data, tables, method, n_steps=1)
        metrics, _ = ctx.evaluate("val")
        assert all(math.isfinite(v) for v in metrics.values()), metrics
