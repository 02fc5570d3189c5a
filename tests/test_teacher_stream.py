"""A live teacher's vector outputs on a seed's augmented stream are computed by the first run that reads them and
read by the seed's other runs (benchmark/teacher_stream.py): the same numbers as each run computing its own."""

import pandas as pd

from conftest import run_cli

METRICS = ["test_top1", "test_top1_at_best_val", "match_acc", "best_val_top1", "best_val_epoch"]


def test_shared_teacher_outputs_give_every_run_its_own_numbers(tmp_path, cifar_dir):
    args = [
        "run",
        "--task",
        "cifar100-kd",
        "--profile",
        "smoke",
        "--data-dir",
        str(cifar_dir),
        "--methods",
        "kd,dkd,crd,fitnet",
        "--set",
        "epochs=2",
        "--set",
        "num_threads=1",
        "--set",
        "data_fraction=0.02",
    ]
    env = {"XKD_CACHE_DIR": str(tmp_path / "cache")}
    on = run_cli([*args, "--out", "on"], tmp_path, env)
    assert on.returncode == 0, on.stderr[-3000:]
    off = run_cli(
        [*args, "--set", "share_teacher=false", "--out", "off", "--tracking-uri", f"sqlite:///{tmp_path / 'off.db'}"],
        tmp_path,
        env,
    )
    assert off.returncode == 0, off.stderr[-3000:]
    a, b = (pd.read_csv(tmp_path / d / "runs.csv").set_index("method") for d in ("on", "off"))
    assert a[METRICS].equals(b[METRICS])  # every run, every metric, to the last bit
    shared = a["teacher_epochs_shared"]
    # kd computed both epochs; dkd (logits) and crd (embeddings) read them; fitnet reads stage maps (not stored)
    assert shared["kd"] == 0 and shared["dkd"] == shared["crd"] == 2
    assert pd.isna(shared["fitnet"])
    assert "teacher_epochs_shared" not in b
    assert len(list((tmp_path / "cache" / "teacher_stream").glob("*/epoch*.pt"))) == 2


def test_another_thread_count_is_another_stream(tmp_path, cifar_dir):
    """The teacher's forward sums in another order with another thread count: its stored outputs are not used."""
    args = ["run", "--task", "cifar100-kd", "--profile", "smoke", "--data-dir", str(cifar_dir), "--methods", "kd"]
    env = {"XKD_CACHE_DIR": str(tmp_path / "cache")}
    for threads in (1, 2):
        res = run_cli(
            [
                *args,
                "--set",
                f"num_threads={threads}",
                "--out",
                f"t{threads}",
                "--tracking-uri",
                f"sqlite:///{tmp_path / f't{threads}.db'}",
            ],
            tmp_path,
            env,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        assert pd.read_csv(tmp_path / f"t{threads}" / "runs.csv")["teacher_epochs_shared"].tolist() == [0]
    assert len(list((tmp_path / "cache" / "teacher_stream").iterdir())) == 2
