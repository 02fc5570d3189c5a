"""End-to-end runs on the real CIFAR-100 (small stratified subsets, tiny student)."""

import json
import re
import time

import mlflow
import pandas as pd
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import run_cli

FAST = ["--profile", "smoke", "--set", "data_fraction=0.02", "--set", "val_fraction=0.01", "--set", "test_limit=500"]


def _runs(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xkd-cifar100")
    return client, client.search_runs([exp.experiment_id])


def test_all_methods_smoke_logs_one_mlflow_run_each(tmp_path, cifar_dir):
    res = run_cli(
        ["run", "--task", "cifar100", "--methods", "all", "--data-dir", str(cifar_dir), *FAST, "--out", "out"], tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    client, runs = _runs(tmp_path)
    from conftest import vector_teacher_methods

    names = vector_teacher_methods()  # `at` needs an image teacher's maps: left out of `all` on cifar100
    assert len(runs) == len(names) and "at" not in names
    assert {r.data.params["method"] for r in runs} == set(names)
    assert "at left out: needs the teacher's stage maps" in res.stdout
    for r in runs:
        assert r.info.status == "FINISHED"
        p, m = r.data.params, r.data.metrics
        assert p["teacher_id"] == "minilm-l6-v2/raw-meanpool" and "selection_rule" in p and "match_space" in p
        assert 0 <= m["test_top1"] <= 100 and "test_top1_at_best_val" in m and "val_top1" in m
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"config.json", "history.json", "features.npz"} <= arts
    ours = next(r for r in runs if r.data.params["method"] == "ours_feature")
    assert ours.data.params["hp.feat_dist"] == "l2sq_norm_sum" and float(ours.data.params["hp.margin"]) == 0.09
    assert ours.data.params["hp.alpha"] == "0.6" and ours.data.params["match_space"] == "raw_student"
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(table) == len(names) and (tmp_path / "out" / "results.md").read_text().count("\n") >= len(table) + 2


def _final(tmp_path, name):
    return {k: v for k, v in json.loads((tmp_path / name).read_text()).items()}


def test_same_seed_gives_identical_metrics_and_resume_matches(tmp_path, cifar_dir):
    base = ["run", "--methods", "ours_feature_quality,ccl", "--data-dir", str(cifar_dir), *FAST, "--set", "epochs=2"]
    a = run_cli([*base, "--out", "a"], tmp_path)
    b = run_cli([*base, "--out", "b"], tmp_path)
    assert a.returncode == 0 and b.returncode == 0, a.stderr[-2000:] + b.stderr[-2000:]
    ra, rb = pd.read_csv(tmp_path / "a" / "runs.csv"), pd.read_csv(tmp_path / "b" / "runs.csv")
    cols = ["test_top1", "test_top1_at_best_val", "match_acc", "best_val_top1"]
    assert ra[cols].equals(rb[cols])
    # interrupted after epoch 1, then resumed: same final metrics as the uninterrupted run
    c1 = run_cli([*base, "--out", "c", "--set", "stop_after_epochs=1"], tmp_path)
    assert c1.returncode == 0 and "stopped after epoch 1" in c1.stdout
    assert not (tmp_path / "c" / "runs.csv").exists()
    c2 = run_cli([*base, "--out", "c", "--resume"], tmp_path)
    assert c2.returncode == 0, c2.stderr[-2000:]
    rc = pd.read_csv(tmp_path / "c" / "runs.csv")
    assert rc[cols].equals(ra[cols])
    # the resumed run continued the same MLflow run: 2 epochs of val metrics in one run
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    hist = client.get_metric_history(rc["run_id"][0], "val_top1")
    assert [h.step for h in hist] == [1, 2]


def test_perf_command_reports_every_method(tmp_path, cifar_dir):
    res = run_cli(
        ["perf", "--methods", "baseline,ours_feature,pkt", "--data-dir", str(cifar_dir), "--profile", "smoke", "--steps", "3"],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    for name in (
        "bare PyTorch loop",
        "baseline",
        "ours_feature",
        "pkt",
        "achieved GFLOP/s",
        "% of peak",
        "peak fp32: measured",
        "2048^3 fp32 matmuls",
    ):
        assert name in res.stdout
    assert res.stdout.startswith("perf: task cifar100 | profile smoke")  # the first line comes before any timing
    # the % of peak column is against the peak of the precision the loop runs (fp32 here), and no other is measured
    assert [line for line in res.stdout.splitlines() if "<- the % of peak column" in line][0].startswith("peak fp32")
    assert "bf16 matmuls" not in res.stdout and "peak bf16" not in res.stdout


def test_perf_shows_the_live_teachers_share_and_the_baseline_runs_none(tmp_path, cifar_dir):
    res = run_cli(
        [
            "perf",
            "--task",
            "cifar100-kd",
            "--methods",
            "baseline,kd",
            "--data-dir",
            str(cifar_dir),
            "--profile",
            "smoke",
            "--set",
            "teacher_data_fraction=0.02",
            "--steps",
            "2",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| (live teacher forward alone)" in res.stdout and "of a kd step is the teacher's forward" in res.stdout
    gflop = {
        line.split("|")[1].strip(): float(line.split("|")[5])
        for line in res.stdout.splitlines()
        if line.startswith("| ") and "GFLOP" not in line and "---" not in line
    }
    # the baseline's step counts the student's FLOPs only (no teacher forward); KD's adds the teacher's
    assert gflop["baseline"] == pytest.approx(gflop["bare PyTorch loop"], rel=0.02)
    assert gflop["kd"] == pytest.approx(gflop["baseline"] + gflop["(live teacher forward alone)"], rel=0.02)


def test_runs_carry_tags_a_dataset_input_and_optionally_the_model(tmp_path, cifar_dir):
    res = run_cli(
        ["run", "--methods", "baseline", "--data-dir", str(cifar_dir), *FAST, "--set", "log_model=true", "--out", "o"], tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    client, (run,) = _runs(tmp_path)
    tags = run.data.tags
    assert {k: tags[k] for k in ("task", "method", "profile", "seed", "student")} == {
        "task": "cifar100",
        "method": "baseline",
        "profile": "smoke",
        "seed": "0",
        "student": "resnet8_w16",
    }
    assert tags["teacher"] == "minilm-l6-v2/raw-meanpool"
    full = client.get_run(run.info.run_id)
    (ds,) = full.inputs.dataset_inputs
    assert ds.dataset.name == "cifar100" and len(ds.dataset.digest) >= 16
    from benchmark.resolve import build_config
    from tasks.cifar100 import Cifar100

    task = Cifar100()
    cfg = build_config(
        task, "smoke", {"data_dir": str(cifar_dir)}, {"data_fraction": "0.02", "val_fraction": "0.01", "test_limit": "500"}
    )
    assert task.load(cfg).digest()[:36] == ds.dataset.digest  # the same data, the same digest
    assert json.loads(ds.dataset.profile)["n_train"] == int(run.data.params["n_train"])
    import mlflow.pytorch

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")  # models:/ URIs resolve through the store
    model = mlflow.pytorch.load_model(tags["xkd.model_uri"])
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 32, 32))
    assert out.logits.shape == (2, 100)
    info = mlflow.models.get_model_info(tags["xkd.model_uri"])
    assert len(info.metadata["class_names"]) == 100 and info.metadata["class_names"][0] == "apple"


def test_perf_counts_the_flops_of_a_training_step_by_hand():
    """The MLP student of the synthetic task: 2*B*in*out per Linear forward; backward twice that, except the
    first layer, whose input needs no gradient (weight gradient only). BatchNorm and ReLU are not counted."""
    from benchmark.perf import bare_loop_step, device_peak, step_flops
    from benchmark.resolve import build_config
    from tasks.synthetic import Synthetic

    task = Synthetic()
    cfg = build_config(task, "smoke", {}, {})
    data = task.load(cfg)
    b = cfg.batch_size
    layers = [(48, 128), (128, 128), (128, 64), (64, 20)]
    fwd = sum(2 * b * i * o for i, o in layers)
    bwd = 2 * b * 48 * 128 + sum(4 * b * i * o for i, o in layers[1:])
    assert step_flops(bare_loop_step(cfg, task, data, torch.device("cpu"))) == fwd + bwd
    peak, note = device_peak(torch.device("cpu"), bf16=False)
    # measured (a large matmul), never the nominal formula: a step of the matmul itself reaches it
    assert peak > 1e9 and re.match(r"measured: best of [1-5] 2048\^3 fp32 matmuls", note)
    assert f"{peak / 1e9:.1f} GFLOP/s" in note
    assert device_peak(torch.device("cpu"), bf16=False) == (peak, note)  # measured once per process


def test_a_cpu_peak_measurement_is_bounded_in_time():
    """A slow or busy CPU gets fewer matmuls, never minutes of them: the budget ends the repetitions."""
    from benchmark.perf import measured_cpu_peak

    t0 = time.perf_counter()
    peak, note = measured_cpu_peak(n=512, reps=10_000, budget_s=0.5)
    assert time.perf_counter() - t0 < 5 and peak > 0
    done = int(re.match(r"measured: best of (\d+) 512\^3 fp32", note).group(1))
    assert 1 <= done < 10_000


@pytest.mark.skipif(
    not __import__("benchmark.devices", fromlist=["x"]).cpu_bf16_native(),
    reason="this CPU has no native bf16 (avx512_bf16/amx_bf16): a bf16 peak is not measured here",
)
def test_a_bf16_peak_is_measured_where_the_cpu_computes_bf16_natively():
    from benchmark.perf import device_peak

    peak16, note16 = device_peak(torch.device("cpu"), bf16=True)  # bf16 runs: a bf16 matmul's peak, measured
    assert peak16 > 1e9 and re.match(r"measured: best of [1-5] 2048\^3 bf16 matmuls", note16)


class _Bf16Ops(TorchDispatchMode):
    """Records every operator that reads or writes a bf16 tensor."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if any(t.dtype == torch.bfloat16 for t in tensors):
            self.ops.append(str(func))
        return out


def test_a_cpu_without_native_bf16_runs_no_bf16_matmul_and_says_so(tmp_path, monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes any CPU one without native bf16 (as CI's AVX2-only machines are): no bf16 peak
    is measured (no bf16 operator runs at all in an fp32 `perf`), a bf16 run is warned about in one line."""
    from benchmark.perf import device_peak
    from conftest import run_cli_inprocess

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with _Bf16Ops() as seen:
        assert device_peak(torch.device("cpu"), bf16=True) == (None, "bf16: not native on this CPU (emulated); no peak measured")
    assert seen.ops == []
    args = ["perf", "--task", "synthetic", "--profile", "smoke", "--methods", "baseline,kd", "--steps", "2"]
    with _Bf16Ops() as seen:
        res = run_cli_inprocess(args, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert seen.ops == [] and "native CPU bf16: none" in res.stdout and "peak fp32: measured" in res.stdout
    from benchmark.devices import _warn_emulated_bf16

    _warn_emulated_bf16.cache_clear()  # once per process: this call's process is the test's
    res = run_cli_inprocess([*args, "--set", "precision=bf16"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "bf16: not native on this CPU (emulated); no peak measured" in res.stdout.splitlines()
    assert "peak fp32" not in res.stdout and "| n/a" in res.stdout  # no % of peak without a peak
    assert [line for line in res.stderr.splitlines() if "bf16 is emulated here" in line] == [
        "warning: precision=bf16 on a CPU without native bf16 (no avx512_bf16 or amx_bf16): bf16 is emulated here, "
        "many times slower than fp32 (precision=auto or fp32 avoids it)"
    ]


def test_compile_gives_the_eager_step(tmp_path):
    """`--set compile=true`: the compiled student's first training step has the eager step's loss and leaves the
    same weights (same init and batch; float differences only), and checkpoints keep the module's own keys."""
    from dataclasses import replace

    from benchmark.resolve import build_config
    from benchmark.teacher_cache import TeacherCache
    from benchmark.trainer import Context
    from tasks.synthetic import Synthetic

    task = Synthetic()
    cfg = build_config(task, "smoke", {}, {})
    data = task.load(cfg)
    tables = task.teacher_tables(cfg, data, TeacherCache(tmp_path))
    idx = torch.arange(cfg.batch_size)
    steps = []
    for c in (cfg, replace(cfg, compile=True)):
        ctx = Context(c, task, data, tables, "kd", {})
        loss, _, _ = ctx.train_step(idx)
        steps.append(
            (loss.item(), torch.cat([p.detach().flatten() for p in ctx.student.parameters()]), sorted(ctx.state()["student"]))
        )
    (l0, w0, k0), (l1, w1, k1) = steps
    assert abs(l0 - l1) < 1e-4 and torch.allclose(w0, w1, atol=1e-5) and k0 == k1


def test_a_timm_student_and_a_timm_teacher_run_the_smoke_profile(tmp_path, cifar_dir):
    """`--student timm:NAME` (FitNet reads its stage maps) and an image teacher `teacher_arch=timm:NAME`, on
    the real CIFAR-100; each run records that its student starts from random weights."""
    res = run_cli(
        [
            "run",
            "--task",
            "cifar100-kd",
            "--methods",
            "baseline,fitnet,kd",
            "--data-dir",
            str(cifar_dir),
            *FAST,
            "--student",
            "timm:test_resnet",
            "--set",
            "teacher_arch=timm:test_resnet",
            "--set",
            "teacher_epochs=1",
            "--out",
            "o",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("xkd-cifar100-kd").experiment_id])
    runs = [r for r in runs if r.data.tags.get("xkd.kind") == "train"]
    assert sorted(r.data.params["method"] for r in runs) == ["baseline", "fitnet", "kd"]
    assert {r.data.params["student"] for r in runs} == {"timm:test_resnet"}
    assert {r.data.params["student_weights"] for r in runs} == {"random initialisation (timm model, pretrained=False)"}
    assert all(r.info.status == "FINISHED" and r.data.metrics["test_top1"] >= 0 for r in runs)
    assert "training the image teacher timm:test_resnet once" in res.stdout


def test_a_kill_within_an_epoch_resumes_from_its_step_to_the_uninterrupted_numbers(tmp_path, cifar_dir):
    """Issue 45: with only epoch checkpoints an interrupt lost the whole epoch (a paper-profile epoch is an
    hour). A checkpoint every checkpoint_every_s seconds between steps (here every step) keeps the epoch's
    batches, its data generator and running sums: kill -9 in the middle of epoch 1, --resume goes on at the next
    step, and every final metric equals the uninterrupted run's (whose checkpoints were at epoch ends only)."""
    import signal
    import subprocess
    import sys

    base = ["run", "--methods", "kd", "--data-dir", str(cifar_dir), *FAST, "--set", "epochs=2"]
    ref = run_cli([*base, "--out", "ref", "--set", "checkpoint_every_s=0"], tmp_path)
    assert ref.returncode == 0, ref.stderr[-2000:]
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    args = [*base, "--out", "k", "--set", "checkpoint_every_s=0.001"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmark", *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    step, deadline = 0, time.time() + 300
    while step < 5 and time.time() < deadline and proc.poll() is None:
        for ck in (tmp_path / "k" / "checkpoints").glob("kd-*.pt") if (tmp_path / "k" / "checkpoints").exists() else []:
            try:
                mid = torch.load(ck, weights_only=False).get("mid") or {}
            except Exception:  # noqa: BLE001 - read while being replaced
                continue
            step = mid.get("step", 0) if mid.get("epoch") == 0 else step
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert step >= 5, "no checkpoint within the first epoch"
    again = run_cli([*args, "--resume"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert re.search(r"kd seed 0: resuming epoch 1 of 2 at step \d+ of \d+ \(a checkpoint within the epoch\)", again.stdout), (
        again.stdout
    )
    cols = ["test_top1", "test_top1_at_best_val", "best_val_top1", "train_loss"]
    a, b = pd.read_csv(tmp_path / "ref" / "runs.csv"), pd.read_csv(tmp_path / "k" / "runs.csv")
    assert a[[c for c in cols if c in a]].equals(b[[c for c in cols if c in b]])
