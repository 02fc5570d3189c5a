"""Evaluation has no side effects: eval mode, no buffer changes, same result twice and at any batch size."""

from dataclasses import replace

import torch

from test_teacher import _context, counting_teacher  # noqa: F401, F811  (the fixture)


def _buffers(ctx):
    return {k: v.clone() for m in (ctx.student, ctx.method) for k, v in m.state_dict().items()}


def test_evaluation_is_repeatable_and_leaves_no_trace(cifar_dir, tmp_path, counting_teacher):  # noqa: F811 (a fixture)
    ctx, _ = _context(cifar_dir, tmp_path, "ickd")  # ICKD's connector has a BatchNorm1d used by matching
    for i in range(3):
        ctx.train_step(torch.arange(i * 16, (i + 1) * 16))
    assert ctx.student.training and ctx.method.training
    before = _buffers(ctx)
    m1, a1 = ctx.evaluate("test")
    assert ctx.student.training and ctx.method.training, "evaluation must restore train mode"
    after = _buffers(ctx)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), (
        "evaluation changed a buffer (e.g. BatchNorm running statistics)"
    )
    m2, a2 = ctx.evaluate("test")
    ctx.cfg = replace(ctx.cfg, eval_batch_size=37)
    m3, a3 = ctx.evaluate("test")
    assert m1 == m2 and m1["match_acc"] == m1["match_acc"]  # matching ran (ICKD has a connector)
    assert abs(m1["test_top1"] - m3["test_top1"]) < 1e-9 and abs(m1["match_acc"] - m3["match_acc"]) < 1e-9
    for k in a1:
        assert torch.allclose(torch.as_tensor(a1[k]).double(), torch.as_tensor(a2[k]).double())
        assert torch.allclose(torch.as_tensor(a1[k]).double(), torch.as_tensor(a3[k]).double(), atol=1e-5)


def test_ours_run_params_say_what_the_alpha_path_is():
    from benchmark.registry import METHODS
    from benchmark.types import Dims

    cls = METHODS.get("ours_feature")
    assert cls(Dims(64, 384, 10), cls.Hparams()).run_params() == {"alpha_path": "learned_linear_384to64"}
    assert cls(Dims(384, 384, 10), cls.Hparams()).run_params() == {"alpha_path": "frozen_identity"}
    assert METHODS.get("pkt")(Dims(64, 384, 10), METHODS.get("pkt").Hparams()).run_params() == {}
