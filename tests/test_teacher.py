"""The frozen teacher: cached once per key, never run or optimised in the training loop."""

import pytest
import torch

from benchmark.resolve import build_config
from benchmark.teacher_cache import TeacherCache
from benchmark.trainer import Context
from tasks.cifar100 import Cifar100


class CountingTeacher:
    """Registered as a class like every teacher; the count is kept on the class across the runs' instances."""

    id = "test/counting-v1"
    modality = "text"
    dim = 8
    calls = 0

    def __init__(self, options=None):
        pass

    def encode(self, texts):
        type(self).calls += 1
        g = torch.Generator().manual_seed(len(texts))
        return torch.randn(len(texts), self.dim, generator=g)


def test_encoder_runs_once_per_cache_key(tmp_path):
    CountingTeacher.calls = 0
    teacher = CountingTeacher()
    a, key_a = TeacherCache(tmp_path).embeddings(teacher, ["a photo of a cat.", "a photo of a dog."])
    b, key_b = TeacherCache(tmp_path).embeddings(teacher, ["a photo of a cat.", "a photo of a dog."])
    assert teacher.calls == 1 and key_a == key_b and torch.equal(a, b)
    _, key_c = TeacherCache(tmp_path).embeddings(teacher, ["a photo of a cow.", "a photo of a dog."])
    assert teacher.calls == 2 and key_c != key_a
    assert not list(tmp_path.rglob("*.tmp*"))


@pytest.fixture
def counting_teacher():
    """The test double is registered for the tests that ask for it only: a later `list` in the same worker
    must not see it."""
    from benchmark.registry import TEACHERS

    TEACHERS.add("test-counting", CountingTeacher, "test double that counts encoder calls")
    yield
    TEACHERS._entries.pop("test-counting")


def _context(cifar_dir, tmp_path, method):
    from benchmark.registry import TEACHERS

    teacher = TEACHERS.get("test-counting")
    task = Cifar100()
    cfg = build_config(
        task, "smoke", {"data_dir": str(cifar_dir), "teacher": "test-counting"}, {"data_fraction": "0.02", "val_fraction": "0.01"}
    )
    data = task.load(cfg)
    tables = task.teacher_tables(cfg, data, TeacherCache(tmp_path))
    return Context(cfg, task, data, tables, method, {}), teacher


def test_teacher_not_optimised_and_not_run_in_the_loop(cifar_dir, tmp_path, counting_teacher):
    for method in ("ours_feature", "clip", "kd"):
        ctx, teacher = _context(cifar_dir, tmp_path, method)
        calls = teacher.calls
        table = ctx.tables.embedding.clone()
        opt_ids = {id(p) for g in ctx.opt.param_groups for p in g["params"]}
        assert id(ctx.tables.embedding) not in opt_ids and not ctx.tables.embedding.requires_grad
        for i in range(3):
            ctx.train_step(torch.arange(i * 16, (i + 1) * 16))
        assert teacher.calls == calls, "the teacher encoder ran inside the training loop"
        assert torch.equal(ctx.tables.embedding, table) and ctx.tables.embedding.grad is None
        if method == "ours_feature":  # the projection head is trainable and in the optimiser
            assert all(id(p) in opt_ids for p in ctx.method.head.parameters())


def test_minilm_teacher_is_real_and_offline():
    from benchmark.teachers import build_teacher

    e = torch.nn.functional.normalize(build_teacher("minilm").encode(["apple", "pear", "tiger", "lion", "truck"]), dim=1)
    sim = e @ e.t()
    assert sim[0, 1] > sim[0, 2] and sim[2, 3] > sim[2, 4]
    assert e.shape == (5, 384)


def test_open_clip_text_tower_runs_with_random_weights():
    from benchmark.teachers import build_teacher

    t = build_teacher("clip-vit-b16-random")
    e1 = t.encode(["a photo of a cat."])
    assert e1.shape == (1, 512) and t.id == "open_clip/ViT-B-16/random-init-seed0"
    again = build_teacher("clip-vit-b16-random").encode(["a photo of a cat."])
    assert torch.equal(e1, again)  # seeded: a stable cache key
