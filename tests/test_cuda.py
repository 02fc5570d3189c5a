"""The branches that run only on CUDA (marked `cuda`; skipped with a reason on a machine without a GPU):
the training set resident on the device or pinned, bf16 autocast with fp32 losses, torch.compile, and
NCCL under torchrun. scripts/gpu_check.sh runs them (`pytest -m cuda`) whenever a GPU is at hand."""

import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import run_cli

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run scripts/gpu_check.sh on one)"),
]


def _context(tmp_path, method="kd", **sets):
    from benchmark.resolve import build_config
    from benchmark.teacher_cache import TeacherCache
    from benchmark.trainer import Context
    from tasks.synthetic import Synthetic

    task = Synthetic()
    cfg = replace(build_config(task, "smoke", {}, {}), device="cuda", **sets)
    data = task.load(cfg)
    tables = task.teacher_tables(cfg, data, TeacherCache(tmp_path))
    return Context(cfg, task, data, tables, method, {})


def test_training_set_on_the_device_and_a_bf16_step_with_fp32_losses(tmp_path):
    ctx = _context(tmp_path)
    assert ctx.data_on_device and ctx.train_split.x.device.type == "cuda"
    assert ctx.precision_resolved == "bf16"  # auto on CUDA
    loss, terms, _ = ctx.train_step(torch.arange(ctx.cfg.batch_size))
    assert torch.isfinite(loss) and loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in terms.values())


def test_a_set_too_large_for_the_device_is_pinned(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (1024, 1024))
    ctx = _context(tmp_path)
    assert not ctx.data_on_device and ctx.train_split.x.is_pinned()


def test_rkd_under_cuda_bf16_autocast_matches_float64():
    from methods.rkd import rkd_terms

    g = np.random.default_rng(5)
    fs, ft = 2 + 0.3 * g.normal(size=(64, 128)), 2 + 0.3 * g.normal(size=(64, 96))
    ref = [float(v) for v in rkd_terms(torch.tensor(fs), torch.tensor(ft))]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = [
            float(v)
            for v in rkd_terms(
                torch.tensor(fs, dtype=torch.float32, device="cuda"), torch.tensor(ft, dtype=torch.float32, device="cuda")
            )
        ]
    np.testing.assert_allclose(got, ref, atol=1e-3, rtol=0)


def test_compile_gives_the_eager_step_on_cuda(tmp_path):
    steps = []
    for compile_ in (False, True):
        ctx = _context(tmp_path, precision="fp32", compile=compile_)
        loss, _, _ = ctx.train_step(torch.arange(ctx.cfg.batch_size))
        steps.append((loss.item(), torch.cat([p.detach().flatten() for p in ctx.student.parameters()])))
    (l0, w0), (l1, w1) = steps
    assert abs(l0 - l1) < 1e-3 and torch.allclose(w0, w1, atol=1e-4)


def test_nccl_one_process_torchrun_smoke(tmp_path):
    res = run_cli(
        ["run", "--task", "synthetic", "--methods", "baseline,crd", "--profile", "smoke", "--out", "o"],
        tmp_path,
        launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "benchmark"],
    )
    assert res.returncode == 0, res.stderr[-3000:]


def test_nccl_collectives_on_one_gpu():
    """NCCL itself (one process, world size 1): all_reduce and all_gather of CUDA tensors."""
    import torch.distributed as dist

    from conftest import free_port

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        t = torch.arange(4.0, device="cuda")
        dist.all_reduce(t)
        parts = [torch.empty_like(t)]
        dist.all_gather(parts, t)
        assert torch.equal(parts[0].cpu(), torch.arange(4.0))
    finally:
        dist.destroy_process_group()
