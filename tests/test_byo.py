"""Bring your own: external plugins (--plugin, entry points), experiment files that reproduce a run,
per-method settings, eval of a trained run, and the command line's guard rails."""

import os
import textwrap

import mlflow
import pytest

from conftest import run_cli, run_cli_inprocess

PLUGIN = textwrap.dedent('''
    """An external plugin: a method and a task, registered from outside the harness."""
    from dataclasses import dataclass

    import torch.nn.functional as F

    from benchmark.method import Hparams, Method, Term, bounded, register
    from benchmark.registry import TASKS
    from tasks.synthetic import Synthetic


    @dataclass
    class MSEHparams(Hparams):
        mse_weight: float = bounded(1.0, 0, None)


    @register("logit_mse", "MSE between student and teacher logits (an external plugin)")
    class LogitMSE(Method):
        Hparams = MSEHparams

        def terms(self, s, t, y):
            return {"logit_mse": Term(((s.logits - t.logits) ** 2).mean(1), self.hp.mse_weight)}


    @TASKS.register("toy", "the synthetic task under another name (an external plugin)")
    class Toy(Synthetic):
        name = "toy"
''')


def _package(root):
    (root / "myplug").mkdir(parents=True)
    (root / "myplug" / "__init__.py").write_text("")
    (root / "myplug" / "plugin.py").write_text(PLUGIN)
    return root


def _env(tmp_path, extra=None):
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path / "ext"), os.environ.get("PYTHONPATH", "")]), **(extra or {})}


def _runs(tmp_path, experiment):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client, [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("xkd.kind") == "train"]


@pytest.mark.parametrize("how", ["--plugin", "entry point"])
def test_an_external_package_registers_a_method_and_a_task(tmp_path, how):
    _package(tmp_path / "ext")
    args = ["run", "--task", "toy", "--methods", "baseline,logit_mse", "--profile", "smoke", "--out", "o"]
    if how == "--plugin":
        args = ["--plugin", "myplug.plugin", *args]
    else:  # an installed distribution declaring the entry point group, as pip would leave it
        dist = tmp_path / "ext" / "myplug-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text("[xkd_bench.plugins]\nmyplug = myplug.plugin\n")
    res = run_cli(args, tmp_path, extra_env=_env(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    client, runs = _runs(tmp_path, "xkd-toy")
    assert {r.data.params["method"] for r in runs} == {"baseline", "logit_mse"}
    toml = client.download_artifacts(
        next(r.info.run_id for r in runs if r.data.params["method"] == "logit_mse"), "experiment.toml", str(tmp_path)
    )
    assert 'plugins = ["myplug.plugin"]' in open(toml).read()
    rep = run_cli(
        [*(["--plugin", "myplug.plugin"] if how == "--plugin" else []), "report", "--out", "r"],
        tmp_path,
        extra_env=_env(tmp_path),
    )
    assert rep.returncode == 0, rep.stderr[-3000:]
    report = (tmp_path / "r" / "report.md").read_text()
    assert "### toy: mlp, smoke" in report and "| logit_mse[^" in report.replace(" (", "[").replace("[^", "[^")


def _contributing_block(first_line: str) -> str:
    """The ```python block of CONTRIBUTING.md that starts with `first_line`, as written there."""
    from pathlib import Path

    text = (Path(__file__).parent.parent / "CONTRIBUTING.md").read_text()
    for block in text.split("```python\n")[1:]:
        code = block.split("```", 1)[0]
        if code.startswith(first_line):
            return code
    raise AssertionError(f"CONTRIBUTING.md has no python block starting with {first_line!r}")


def test_the_from_scratch_task_of_contributing_runs_as_written_with_its_own_fields(tmp_path):
    """CONTRIBUTING's complete task (a Task subclass of nothing built-in) with its own config fields: they are
    listed by `list --profiles`, set with --set and from an experiment file, checked (range, unknown key), logged
    with every run and in its experiment.toml, and the report's setting heading names them."""
    pkg = tmp_path / "ext" / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "blobs.py").write_text(_contributing_block("# mypkg/blobs.py"))
    env, plug = _env(tmp_path), ["--plugin", "mypkg.blobs"]
    listing = run_cli([*plug, "list", "--profiles"], tmp_path, extra_env=env)
    assert listing.returncode == 0 and "#### `blobs`" in listing.stdout and "| blob_noise | 3.0 |" in listing.stdout
    res = run_cli(
        [
            *plug,
            "run",
            "--task",
            "blobs",
            "--profile",
            "smoke",
            "--methods",
            "baseline,kd",
            "--seeds",
            "2",
            "--set",
            "blob_noise=4",
            "--out",
            "o",
        ],
        tmp_path,
        extra_env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    client, runs = _runs(tmp_path, "xkd-blobs")
    assert len(runs) == 4 and {(r.data.params["blob_noise"], r.data.params["blob_dim"]) for r in runs} == {("4.0", "16")}
    toml = open(client.download_artifacts(runs[0].info.run_id, "experiment.toml", str(tmp_path))).read()
    assert "blob_noise = 4.0" in toml and "blob_dim = 16" in toml
    exp = tmp_path / "exp.toml"
    exp.write_text('task = "blobs"\nprofile = "smoke"\nmethods = ["baseline"]\nplugins = ["mypkg.blobs"]\n[set]\nblob_dim = 8\n')
    res = run_cli(["run", "--config", str(exp), "--out", "e"], tmp_path, extra_env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    _, runs = _runs(tmp_path, "xkd-blobs")
    assert any(r.data.params["blob_dim"] == "8" for r in runs)
    for bad, needle in (
        ("blob_noise=-1", "blob_noise=-1.0 is out of range"),
        ("blob_nois=1", "--set blob_nois: unknown key 'blob_nois'; did you mean 'blob_noise'"),
    ):
        res = run_cli(
            [*plug, "run", "--task", "blobs", "--profile", "smoke", "--methods", "baseline", "--set", bad, "--out", "x"],
            tmp_path,
            extra_env=env,
        )
        assert res.returncode == 2 and needle in res.stderr and not (tmp_path / "x").exists(), res.stderr
    rep = run_cli([*plug, "report", "--out", "r"], tmp_path, extra_env=env)
    assert rep.returncode == 0, rep.stderr[-3000:]
    report = (tmp_path / "r" / "report.md").read_text()
    assert "### blobs: mlp, smoke, blob_noise=4.0" in report and "blob_dim=8" in report
    assert "Teacher [mlp, smoke, blob_noise=4.0, blob_dim=16]: class-vectors/seed7; test top-1 100.00 ± 0.00" in report


def test_run_config_reproduces_a_run_from_its_logged_file(tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text(
        'task = "synthetic"\nprofile = "smoke"\nmethods = ["kd", "pkt"]\nseeds = 1\n'
        "[set]\nepochs = 2\nseed = 1\n[method.kd]\ntemperature = 2.0\n"
    )
    res = run_cli(["run", "--config", str(cfg), "--out", "a"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    client, runs = _runs(tmp_path, "xkd-synthetic")
    kd = next(r for r in runs if r.data.params["method"] == "kd")
    assert kd.data.params["hp.temperature"] == "2.0" and kd.data.params["seed"] == "1" and kd.data.params["epochs"] == "2"
    logged = client.download_artifacts(kd.info.run_id, "experiment.toml", str(tmp_path))
    again = run_cli(["run", "--config", logged, "--out", "b"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    _, runs = _runs(tmp_path, "xkd-synthetic")
    kds = [r for r in runs if r.data.params["method"] == "kd"]
    assert len(kds) == 2
    keys = ("test_top1", "val_top1", "match_acc", "train_loss")
    assert [kds[0].data.metrics[k] for k in keys] == [kds[1].data.metrics[k] for k in keys]
    assert kds[0].data.params["run_key"] == kds[1].data.params["run_key"]
    # flags on the command line override the file
    res = run_cli(["run", "--config", str(cfg), "--methods", "baseline", "--epochs", "1", "--out", "c"], tmp_path)
    assert res.returncode == 0 and "baseline" in res.stdout and "pkt " not in res.stdout, res.stderr[-2000:]


def test_eval_reproduces_the_runs_test_metrics(tmp_path):
    """From the checkpoint (last epoch: the run's test metrics) and from the logged MLflow model (best-validation
    epoch: the run's *_at_best_val metrics)."""
    res = run_cli(
        ["run", "--task", "synthetic", "--methods", "ours_feature", "--profile", "smoke", "--set", "log_model=true"], tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    _, runs = _runs(tmp_path, "xkd-synthetic")
    r = runs[0]
    ev = run_cli(["eval", "--run-id", r.info.run_id], tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "Downloading artifacts" not in ev.stderr  # no MLflow progress bars on the console
    import json

    metrics = json.loads(ev.stdout[ev.stdout.index("{") :])
    assert metrics["test_top1"] == pytest.approx(r.data.metrics["test_top1"], abs=1e-9)
    assert metrics["match_acc"] == pytest.approx(r.data.metrics["match_acc"], abs=1e-9)
    ev = run_cli(["eval", "--model-uri", r.data.tags["xkd.model_uri"]], tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    metrics = json.loads(ev.stdout[ev.stdout.index("{") :])
    assert metrics["test_top1"] == pytest.approx(r.data.metrics["test_top1_at_best_val"], abs=1e-9)
    assert metrics["match_acc"] == pytest.approx(r.data.metrics["match_acc_at_best_val"], abs=1e-9)
    bad = run_cli_inprocess(["eval", "--run-id", "0" * 32], tmp_path)
    assert bad.returncode == 2 and f"--run-id {'0' * 32}: no such run in" in bad.stderr, bad.stderr  # not 'no file'
    assert bad.stderr.count("\n") == 1
    assert "(best-validation weights)" in ev.stdout and "(last epoch)" not in ev.stdout  # --model-uri's weights


def test_eval_refuses_another_runs_checkpoint(tmp_path):
    res = run_cli(["run", "--task", "synthetic", "--methods", "kd,pkt", "--profile", "smoke"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    _, runs = _runs(tmp_path, "xkd-synthetic")
    kd = next(r for r in runs if r.data.params["method"] == "kd")
    (pkt_ckpt,) = (tmp_path / "runs" / "synthetic-smoke" / "checkpoints").glob("pkt-*.pt")
    bad = run_cli_inprocess(["eval", "--run-id", kd.info.run_id, "--checkpoint", str(pkt_ckpt)], tmp_path)
    assert bad.returncode == 2 and "is another run's: method pkt (not kd)" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr


def test_per_method_settings_target_one_method(tmp_path):
    from benchmark.plugins import load_plugins
    from benchmark.registry import UsageError
    from benchmark.resolve import split_sets

    load_plugins()
    cfg, hp = split_sets({"kd.temperature": "2", "temperature": "3"}, ["kd", "dkd"])
    assert hp == {"kd.temperature": 2.0, "temperature": 3.0} and cfg == {}
    from benchmark.config import RunConfig
    from benchmark.registry import TASKS
    from benchmark.trainer import resolve_hparams

    task = TASKS.get("synthetic")()
    assert resolve_hparams("kd", task, RunConfig(task="synthetic"), hp)[1].temperature == 2.0  # its own wins
    assert resolve_hparams("dkd", task, RunConfig(task="synthetic"), hp)[1].temperature == 3.0
    for sets, needle in (
        ({"nosuch.temperature": "2"}, "unknown method 'nosuch'"),
        ({"kd.nosuch": "2"}, "unknown hyperparameter 'nosuch' of 'kd'"),
        ({"pkt.ce_weight": "2"}, "'pkt' is not among the selected methods"),
    ):
        with pytest.raises(UsageError, match=needle):
            split_sets(sets, ["kd", "dkd"])
    res = run_cli_inprocess(["run", "--task", "synthetic", "--methods", "kd", "--set", "kd.nosuch=1"], tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--set kd.nosuch: unknown hyperparameter" in res.stderr


def test_command_line_guard_rails(tmp_path):
    res = run_cli_inprocess(["run", "--task", "synthetic", "--seed", "3"], tmp_path)
    assert res.returncode == 2 and "--set seed=VALUE" in res.stderr and not (tmp_path / "runs").exists()
    with pytest.raises(Exception):  # --debug after the subcommand: the foreseen error raises instead
        from benchmark.cli import main

        main(["run", "--task", "synthetic", "--methods", "baseline", "--seeds", "0", "--debug"])
    from benchmark.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd").choices
    study_opts = {o for a in sub["study"]._actions for o in a.option_strings}
    assert "--method" in study_opts and "--methods" not in study_opts
    run_opts = {o for a in sub["run"]._actions for o in a.option_strings}
    assert {"--epochs", "--lr", "--batch-size", "--debug", "--plugin", "--config"} <= run_opts and "--seed" not in run_opts
    for name, p in sub.items():  # every option says what it is for
        for a in p._actions:
            assert a.help, f"{name} {a.option_strings or a.dest} has no help"
    messages = {name: p.get_default("interrupted") or "" for name, p in sub.items()}
    # run's message before any run starts; once one runs, it names that run and whether --resume continues it
    assert "rerun the same command" in messages["run"] and all("--resume" not in messages[n] for n in ("report", "study", "data"))


def test_a_run_logs_only_its_own_tasks_fields(tmp_path):
    from benchmark.config import RunConfig

    p = RunConfig(task="tinyimagenet", teacher="minilm").as_params()
    assert "synth_per_class" not in p and "val_trials_per_speaker" not in p and "mfh_dim" not in p
    assert "teacher_arch" not in p and "epochs" in p and "image_size" in p
    assert "synth_gamma" in RunConfig(task="synthetic").as_params()
    assert "teacher_arch" in RunConfig(task="cifar100-kd", teacher="img-trained").as_params()


def test_eval_report_and_compare_follow_a_plugin_tasks_runs_without_flags(tmp_path):
    """Issue 45: `eval` of a plugin run said "unknown task"; `report` without --plugin dropped the plugin task's
    metric labels; `report --compare` of a plugin task between two stores was refused for settings its runs never
    logged (the synthetic task's fields, filled in with their defaults because another task's runs had them).
    Now runs record their plugins (param `plugins`, experiment.toml) and eval and report load them."""
    _package(tmp_path / "ext")
    env, plug = _env(tmp_path), ["--plugin", "myplug.plugin"]
    toy = ["run", "--task", "toy", "--methods", "baseline,logit_mse", "--profile", "smoke", "--seeds", "2", "--out", "o"]
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        res = run_cli([*plug, *toy], tmp_path / side, extra_env=env)
        assert res.returncode == 0, res.stderr[-3000:]
    res = run_cli(
        ["run", "--task", "synthetic", "--methods", "baseline", "--profile", "smoke", "--out", "s"], tmp_path / "a"
    )  # another task's runs beside them in store a: they log the synth_* fields
    assert res.returncode == 0, res.stderr[-3000:]
    client, runs = _runs(tmp_path / "a", "xkd-toy")
    assert {r.data.params["plugins"] for r in runs} == {"myplug.plugin"}
    rid = next(r.info.run_id for r in runs if r.data.params["method"] == "logit_mse")
    ev = run_cli(["eval", "--run-id", rid, "--out", "o"], tmp_path / "a", extra_env=env)
    assert ev.returncode == 0 and "logit_mse seed" in ev.stdout, ev.stderr[-3000:]
    rep = run_cli(["report", "--out", "r"], tmp_path / "a", extra_env=env)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "### toy: mlp, smoke" in (tmp_path / "a" / "r" / "report.md").read_text()
    cmp = run_cli(
        ["report", "--compare", str(tmp_path / "a" / "mlflow.db"), str(tmp_path / "b" / "mlflow.db"), "--out", "c"],
        tmp_path,
        extra_env=env,
    )
    assert cmp.returncode == 0 and "settings differ" not in cmp.stderr, cmp.stderr[-3000:]
    assert "synth_" not in (tmp_path / "c" / "compare.md").read_text()
    missing = run_cli(["report", "--out", "r2"], tmp_path / "a")  # the plugin's package is not importable here
    assert missing.returncode == 2 and "the runs' recorded plugin myplug.plugin: cannot import it" in missing.stderr
    assert not (tmp_path / "a" / "r2").exists()
