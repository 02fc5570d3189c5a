"""torchrun DDP (2 processes, gloo, CPU): the same metrics as one process, one MLflow run per method (rank 0
logs), and --resume after an interruption. The synthetic task keeps it to seconds."""
import sys

import mlflow
import pandas as pd
import torch

from conftest import run_cli

ARGS = ["run", "--task", "synthetic", "--methods", "baseline,kd,crd", "--profile", "smoke", "--set", "sync_bn=true"]
COLS = ["test_top1", "test_top1_at_best_val", "match_acc", "best_val_top1"]


def torchrun(args, tmp_path):
    return run_cli(args, tmp_path, launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone",
                                             "--nproc_per_node", "2", "-m", "benchmark"])


def test_two_process_ddp_matches_one_process_logs_once_and_resumes(tmp_path):
    one = run_cli([*ARGS, "--out", "one"], tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun([*ARGS, "--out", "two"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "distributed: 2 processes, 32 samples each of every global batch of 64" in two.stdout
    a, b = (pd.read_csv(tmp_path / d / "runs.csv").set_index("method")[COLS] for d in ("one", "two"))
    # the same global batches, augmentation draws, averaged gradients and global-batch BatchNorm: equal up to
    # the float order of the reductions; stated tolerance 0.5 points (measured: identical)
    assert (a - b).abs().max().max() <= 0.5, (a, b)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xkd-synthetic")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.params.get("world_size") == "2"]
    assert sorted(r.data.tags["method"] for r in runs) == ["baseline", "crd", "kd"]  # rank 0 alone logs
    assert {r.info.status for r in runs} == {"FINISHED"}
    # interrupted after epoch 1 of 3 (a checkpoint written by rank 0), then --resume: the uninterrupted result
    stop = torchrun([*ARGS, "--out", "r", "--set", "stop_after_epochs=1"], tmp_path)
    assert stop.returncode == 0 and "stopped after epoch 1" in stop.stdout, stop.stderr[-3000:]
    again = torchrun([*ARGS, "--out", "r", "--resume"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    r = pd.read_csv(tmp_path / "r" / "runs.csv").set_index("method")[COLS]
    assert (r - b).abs().max().max() == 0, (r, b)
    resumed = [x for x in client.search_runs([exp.experiment_id]) if x.data.params.get("world_size") == "2"]
    assert len(resumed) == 6 and {x.info.status for x in resumed} == {"FINISHED"}
    # perf under torchrun times the data-parallel step (rank 0 prints one table)
    perf = torchrun(["perf", "--task", "synthetic", "--profile", "smoke", "--methods", "baseline,kd", "--steps", "2"],
                    tmp_path)
    assert perf.returncode == 0, perf.stderr[-3000:]
    assert "2 process(es)" in perf.stdout and perf.stdout.count("| kd ") == 1 and "achieved GFLOP/s" in perf.stdout


def test_sync_batchnorm_equals_batchnorm_in_one_process():
    from benchmark.distributed import SyncBatchNorm, convert_sync_batchnorm
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4))
    sync = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4)))
    sync.load_state_dict(net.state_dict())
    assert isinstance(sync[1], SyncBatchNorm)
    x = torch.randn(8, 5)
    assert torch.allclose(net(x), sync(x)) and torch.allclose(net[1].running_var, sync[1].running_var)
