"""Bad input: one clear line naming what is valid, exit code 2, nothing written."""

import pytest

from conftest import run_cli, run_cli_inprocess


def _assert_refused(res, tmp_path, *needles):
    assert res.returncode == 2, res.stderr
    for n in needles:
        assert n in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "something was written"


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--methods", "pktt"], ["unknown method 'pktt'; did you mean 'pkt'?", "known: baseline"]),
        (["--task", "imagenet"], ["invalid choice: 'imagenet'", "cifar100"]),
        (["--task", "cifr100"], ["invalid choice: 'cifr100'", "did you mean 'cifar100' or 'cifar100-kd'?"]),
        (["--profile", "huge"], ["unknown profile 'huge'", "smoke"]),
        (["--profile", "quik"], ["unknown profile 'quik' for task cifar100; did you mean 'quick'?"]),
        (["--teacher", "minilmm"], ["invalid choice: 'minilmm'", "did you mean 'minilm'?"]),
        (["--student", "vgg"], ["unknown student 'vgg'", "resnet8"]),
        (["--teacher", "bert"], ["invalid choice: 'bert'", "minilm"]),
        (["--set", "margn=0.1"], ["--set margn: unknown key 'margn'; did you mean 'margin'"]),
        (["--set", "epochs=two"], ["epochs=two: expected an integer"]),
        (["--set", "feat_dist=l1", "--methods", "ours_feature"], ["feat_dist='l1' is not valid", "l2sq_norm_sum"]),
        (["--set", "schedule=linear"], ["schedule='linear' is not valid"]),
        (["--set", "noequals"], ["--set expects key=value"]),
        (["--seeds", "0"], ["--seeds must be >= 1"]),
        (["--student", "mlp"], ["student 'mlp' does not fit this task's images or audio"]),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, cifar_dir, args, needles):
    res = run_cli_inprocess(["run", "--profile", "smoke", "--data-dir", str(cifar_dir), *args], tmp_path)
    _assert_refused(res, tmp_path, *needles)


def test_missing_data_exits_2(tmp_path):
    res = run_cli_inprocess(
        ["run", "--profile", "smoke", "--methods", "baseline", "--data-dir", str(tmp_path / "nope")], tmp_path
    )
    assert res.returncode == 2, res.stderr
    assert "CIFAR-100 not found" in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "something was written"


def test_list_names_every_kind(tmp_path):
    from benchmark.registry import METHODS, STUDENTS, TASKS, TEACHERS

    res = run_cli(["list"], tmp_path)
    assert res.returncode == 0
    for reg in (METHODS, TASKS, STUDENTS, TEACHERS):
        for name in reg.names():
            assert f"  {name} " in res.stdout, name
    for task in TASKS.names():
        for profile in TASKS.get(task).profiles:
            assert f"  {task}:{profile} " in res.stdout


def test_docs_profile_tables_are_the_listed_ones(tmp_path):
    """docs/tasks.md shows each task's profiles as `list --profiles` prints them: one home for the values."""
    from conftest import ROOT

    res = run_cli(["list", "--profiles"], tmp_path)
    assert res.returncode == 0 and "#### `cifar100`" in res.stdout
    assert res.stdout.strip() in (ROOT / "docs" / "tasks.md").read_text(), (
        "docs/tasks.md's profile tables are stale: paste `list --profiles`"
    )


def test_paper_profile_uses_the_papers_teacher_and_says_when_it_cannot_load(tmp_path, cifar_dir):
    from benchmark.resolve import build_config
    from tasks.cifar100 import Cifar100

    assert build_config(Cifar100(), "paper", {"data_dir": str(cifar_dir)}, {}).teacher == "clip-vit-b16"
    assert build_config(Cifar100(), "paper", {"data_dir": str(cifar_dir), "teacher": "minilm"}, {}).teacher == "minilm"
    # offline, weights not in the (empty) Hugging Face cache: one untruncated line at once, naming the way out,
    # with no download retries before it (it was 47 lines of retries and a truncated cause)
    res = run_cli(
        [
            "run",
            "--profile",
            "paper",
            "--methods",
            "baseline",
            "--data-dir",
            str(cifar_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        tmp_path,
        {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: the ViT-B-16 'openai' weights")
    assert "HF_HUB_OFFLINE is set" in res.stderr and res.stderr.rstrip().endswith("(--teacher minilm)")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_gpu_check_script_dry_run_lists_its_steps():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    res = subprocess.run(
        ["bash", str(root / "scripts" / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    for step in (
        "cuda tests: ",
        "-m pytest -m cuda",
        "perf, paper students: ",
        "--profile paper",
        "one paper epoch, timed: ",
        "epochs=1",
        "torchrun NCCL smoke: ",
        "--nproc_per_node 1",
    ):
        assert step in res.stdout, step


def test_an_abbreviated_option_is_refused_with_a_hint(tmp_path):
    """`run --seed 3` was read as `--seeds 3` (argparse prefix matching) and trained seeds 0-2."""
    res = run_cli_inprocess(["run", "--task", "synthetic", "--methods", "baseline", "--seed", "3"], tmp_path)
    assert res.returncode == 2 and "unrecognized arguments: --seed 3" in res.stderr and "--set seed=VALUE" in res.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    "body,needles",
    [
        ('seeds = "2"', ["seeds must be an integer", "not a string ('2')"]),
        ("seeds = 1.5", ["seeds must be an integer", "not a number (1.5)"]),
        ("methods = 3", ['methods must be a list of method names or "all"', "not an integer (3)"]),
        ("[methods.kd]\ntemperature = 2.0", ["[method.kd] (singular), not [methods.kd]"]),
        ('methods = ["kd"]\n[methods.kd]\ntemperature = 2.0', ["not valid TOML", "[method.kd] (singular)"]),
        ('methods = ["kd"]\n[method.kdd]\ntemperature = 2.0', ["[method.kdd]: unknown method 'kdd'", "did you mean 'kd'"]),
        ("task = 5", ['task must be a string (task = "synthetic")']),
        (
            'methods = ["kd"]\n[method.kd]\ntemperatur = 2.0',
            ["exp.toml [method.kd] temperatur: unknown hyperparameter 'temperatur' of 'kd'; did you mean 'temperature'?"],
        ),
        ("[set]\nepohcs = 2", ["exp.toml [set] epohcs: unknown key 'epohcs'; did you mean 'epochs'?"]),
        ('[set]\nepochs = "two"', ["exp.toml [set] epochs: epochs=two: expected an integer"]),
        ("seed = 3", ["unknown key(s) seed (seed: did you mean 'seeds'?)", "one run's seed goes in [set] (seed = 3)"]),
        ('methods = ["kd"]\n[method.kd]\ntemperature = -1', ["exp.toml [method.kd] temperature:", "out of range"]),
    ],
)
def test_experiment_file_slips_are_refused_naming_the_file(tmp_path, body, needles):
    """Each in one line with the file's name, exit 2, nothing written (no store, no folder)."""
    exp = tmp_path.parent / f"{tmp_path.name}-exp.toml"
    exp.write_text('task = "synthetic"\nprofile = "smoke"\n' + body + "\n" if not body.startswith("task") else body + "\n")
    res = run_cli_inprocess(["run", "--config", str(exp)], tmp_path)
    _assert_refused(res, tmp_path, str(exp), *needles)


def test_an_experiment_file_with_an_emoji_in_a_path_reads_back(tmp_path):
    """The logged experiment.toml of a run whose data folder holds an emoji (a character beyond the BMP, which
    JSON escapes as a surrogate pair TOML refuses) reads back to the same path, and so does a control
    character."""
    import tomllib

    from benchmark import experiment
    from benchmark.registry import TASKS
    from benchmark.resolve import build_config

    task = TASKS.get("synthetic")()
    for folder in ("data 😀 ünïcode", "tab\there"):
        cfg = build_config(task, "smoke", {"data_dir": str(tmp_path / folder)}, {})
        text = experiment.dump(cfg, "kd", {"temperature": 4.0}, [])
        assert tomllib.loads(text)["data_dir"] == str(tmp_path / folder)
        f = tmp_path / "exp.toml"
        f.write_text(text, encoding="utf-8")
        assert experiment.read(f)["data_dir"] == str(tmp_path / folder)


def test_the_parsers_names_read_from_the_source_are_the_registries_names():
    """benchmark/manifest.py reads the registrations from the source (no import); once the modules are imported
    (conftest loads them), every harness-owned entry of each registry is among them and vice versa."""
    from benchmark.manifest import builtin_names
    from benchmark.registry import DATASETS, FIXTURES, METHODS, STUDENTS, TASKS, TEACHERS

    def module(entry):
        obj = entry.obj[0] if isinstance(entry.obj, tuple) else entry.obj
        return getattr(obj, "__module__", "") or ""

    for reg in (METHODS, TASKS, STUDENTS, TEACHERS, FIXTURES, DATASETS):
        own = {e.name for e in reg.entries() if module(e).split(".")[0] in ("methods", "tasks", "benchmark")}
        assert set(builtin_names()[reg.kind]) == own, reg.kind


def test_list_read_from_the_source_is_the_list_of_the_imported_registries():
    """`list` without plugins reads names, descriptions and profile notes from the source (no torch): the same
    text, line for line, as from the imported registries."""
    from benchmark.commands.listing import listing

    fast, slow = listing(source_only=True), listing(source_only=False)
    assert fast == slow
    assert "  kd " in fast and "  cifar100:quick " in fast and "timm:<name>" in fast


def test_help_list_and_a_mistyped_option_import_neither_torch_nor_the_methods():
    """Issue 45: every command took 16-25 s to start on a busy machine, --help and a one-line usage error
    included: the parser imported every method and task (torch, torchvision, scikit-learn) for their names."""
    import subprocess
    import sys

    code = (
        "import sys, time; t = time.perf_counter(); from benchmark.cli import main\n"
        "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
        "print('RESULT', rc, 'torch' in sys.modules, 'methods.kd' in sys.modules, round(time.perf_counter() - t, 2))"
    )
    for argv, rc in (
        (["list"], 0),
        (["--help"], 0),
        (["run", "--help"], 0),
        (["run", "--seed", "3"], 2),
        (["run", "--task", "cifar1000"], 2),
    ):
        res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT"))
        _, code_, torch_, kd, seconds = line.split()
        assert (int(code_), torch_, kd) == (rc, "False", "False"), (argv, line, res.stderr[-500:])
    assert "--task: invalid choice: 'cifar1000'" in res.stderr and "did you mean 'cifar100'" in res.stderr


def test_runs_first_line_comes_before_torch_is_imported(tmp_path):
    """Issue 45: `run` printed nothing until the methods, tasks, data and teacher were loaded. Its first line
    (the store it writes to) now comes before the harness's modules are imported."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Out:\n"
        "    first = None\n"
        "    def write(self, text):\n"
        "        if Out.first is None and text.strip():\n"
        "            Out.first = (text.strip(), 'torch' in sys.modules)\n"
        "        return len(text)\n"
        "    def flush(self):\n"
        "        pass\n"
        "real, sys.stdout = sys.stdout, Out()\n"
        "from benchmark.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('RESULT', rc, Out.first, file=real)\n"
    )
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "run",
            "--task",
            "synthetic",
            "--profile",
            "smoke",
            "--methods",
            "baseline",
            "--set",
            "epochs=1",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'm.db'}",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert f"RESULT 0 ('store: sqlite:///{tmp_path / 'm.db'}', False)" in res.stdout, res.stdout + res.stderr[-2000:]


def test_kill_usr1_prints_the_commands_stacks_and_it_goes_on(tmp_path):
    """For a command that seems stuck: `kill -USR1 PID` prints every thread's Python stack on its stderr (a
    table worker's: its log) and the command carries on to its normal end."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    out, err = open(tmp_path / "out.log", "w"), open(tmp_path / "err.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmark",
            "run",
            "--task",
            "synthetic",
            "--profile",
            "smoke",
            "--methods",
            "baseline",
            "--set",
            "epochs=40",
            "--out",
            "o",
        ],
        cwd=tmp_path,
        env=env,
        stdout=out,
        stderr=err,
    )
    t0 = time.time()
    while "epoch 1/" not in (tmp_path / "out.log").read_text() and time.time() - t0 < 120:
        assert proc.poll() is None, (tmp_path / "err.log").read_text()[-2000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=300) == 0
    text = (tmp_path / "err.log").read_text()
    assert "Current thread" in text and 'File "' in text and "benchmark" in text, text[-3000:]
    assert (tmp_path / "o" / "runs.csv").is_file()
