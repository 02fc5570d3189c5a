"""The report about the user's own runs: leaderboard first, every study, numbers as numbers, --compare,
an empty store refused; and `run`'s own results files (numeric, never overwritten by another process)."""

import json
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest

from conftest import run_cli_inprocess
from reports.generate import build_report
from stores import fake_store, log_run


def _store(tmp_path, name="s.db", shift=0.0):
    """cifar100 runs: baseline 30, 32, 31 (seeds 0-2); kd +3, +4, +2 over it; pkt -1, 0, -2; plus a `--grid`
    study of KD's temperature (a method the paper never ablated) at T = 1 (val 41, 43) and T = 4 (val 45, 44)."""
    uri, client, exp = fake_store(tmp_path / name, "xkd-cifar100")
    base = {0: 30.0, 1: 32.0, 2: 31.0}
    for seed, b in base.items():
        log_run(
            client,
            exp,
            "baseline",
            seed,
            {"test_top1": b, "wall_s": 10.0, "mean_train_images_per_s": 500.0},
            params={"n_params_student": 83892},
            history=[(4.0, 5.0), (3.0, 9.0)],
        )
        log_run(
            client,
            exp,
            "kd",
            seed,
            {"test_top1": b + {0: 3, 1: 4, 2: 2}[seed] + shift, "wall_s": 12.0},
            params={"hp.temperature": 4.0},
            history=[(4.1, 6.0), (2.9, 11.0)],
        )
        log_run(client, exp, "pkt", seed, {"test_top1": b + {0: -1, 1: 0, 2: -2}[seed]}, history=[(4.2, 5.0), (3.5, 8.0)])
    for t, vals in ((1.0, (41.0, 43.0)), (4.0, (45.0, 44.0))):
        for seed, v in enumerate(vals):
            log_run(
                client,
                exp,
                "kd",
                seed,
                {"test_top1": v - 10, "best_val_top1": v},
                params={"hp.temperature": t},
                tags={"xkd.study": "kd-temperature", "xkd.paper_table": ""},
            )
    return uri


def test_leaderboard_first_sorted_with_numeric_csv(tmp_path):
    uri = _store(tmp_path)
    out = tmp_path / "r"
    report = build_report(uri, out).read_text()
    assert (
        report.index("## Summary")
        < report.index("## Leaderboards")
        < report.index("## Studies")
        < report.index("## The paper's tables")
    )
    board = report.split("## Leaderboards")[1].split("## Studies")[0]
    summary = report.split("## Summary")[1].split("## Leaderboards")[0]  # the verdict first, its forest plot under it
    rows = [line for line in board.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split("|")[2].split("[^")[0].strip() for r in rows] == ["kd", "baseline", "pkt"]
    # kd - baseline: 3, 4, 2 -> +3.00, sd 1, CI +-2.48; pkt: -1, 0, -2 -> -1.00 [-3.48, +1.48]
    assert "+3.00 [+0.52, +5.48] (n=3)" in rows[0] and "-1.00 [-3.48, +1.48] (n=3)" in rows[2]
    assert "![Δ vs baseline, cifar100: resnet8_w16, quick](forest_cifar100_resnet8_w16__quick.png)" in summary
    assert (
        summary.index(
            "**Exploratory** (2 comparisons with the baseline, Holm): 0 survive the correction; the best "
            "is kd, Δ +3.00 [+0.52, +5.48], p_Holm = 0.07. 1 raw 95% CI excludes 0 without surviving"
        )
        < summary.index("Power: with n = 3")
        < summary.index("![Δ vs baseline")
    )
    csv = pd.read_csv(out / "report.csv")
    for col in ("test_top1_mean", "test_top1_std", "test_top1_n", "delta", "delta_ci_low", "delta_ci_high", "p", "p_holm"):
        assert pd.api.types.is_numeric_dtype(csv[col]), col
    kd = csv.set_index("method").loc["kd"]
    assert kd["rank"] == 1 and kd["test_top1_mean"] == pytest.approx(34.0) and kd["delta"] == pytest.approx(3.0)
    assert kd["delta_ci_low"] == pytest.approx(3 - 4.302653 / np.sqrt(3), abs=1e-5)
    # Holm over kd and pkt: p_kd = 0.0377 (t = 5.196), p_pkt = 0.2254 -> 2 x 0.0377 = 0.0754, max(0.0754, 0.2254)
    assert kd["p_holm"] == pytest.approx(2 * kd["p"]) and not kd["significant"]
    assert "train_samples_per_s" in csv and csv.set_index("method").loc["baseline", "wall_s_per_run"] == 10.0
    # the paper's tables appear only with runs: Table 7 (cifar100) yes, Table 1 (speaker) no
    assert "## Table 7:" in report and "## Table 1:" not in report


def test_a_grid_study_of_any_method_gets_its_table_and_figure(tmp_path):
    uri = _store(tmp_path)
    out = tmp_path / "r"
    report = build_report(uri, out).read_text()
    section = report.split("### study `kd-temperature`")[1].split("\n## ")[0]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ") and "---" not in line}
    # T = 1: val 41, 43 -> 42.00, sd 1.414, CI 42 +- 12.706 * 1 = [29.29, 54.71]; T = 4: 44.50 [38.15, 50.85]
    assert "42.00 [29.29, 54.71] (n=2)" in rows["1.0"]
    assert "44.50 [38.15, 50.85] (n=2)" in rows["**4.0** (best on validation)"]
    assert "Best on validation: temperature=4.0; its test top-1 (last epoch): 34.50 ± 0.71 (n=2)." in section
    assert (out / "study_kd-temperature.png").read_bytes()[:4] == b"\x89PNG"
    studies = pd.read_csv(out / "studies.csv")
    best = studies[studies["best_on_validation"]]
    assert list(best["temperature"]) == [4.0] and pd.api.types.is_numeric_dtype(studies["val_ci_low"])
    # study runs stay out of the leaderboard
    assert "45.00" not in report.split("## Studies")[0]
    # the summary gives each study's verdict: the values' span (2.50) under their CIs' half-widths (6.35, 12.71)
    summary = report.split("## Summary")[1].split("## Leaderboards")[0]
    assert (
        "**Study `kd-temperature`** (kd on cifar100, 2 values): best on validation temperature=4.0 (44.50); its "
        "test result 34.50 ± 0.71 (n=2). The values' validation means span 2.50 points, less than the seeds' "
        "spread (95% CI half-widths 6.4-12.7): this table does not show that the choice matters"
    ) in summary


def test_a_store_of_studies_only_says_so_and_gives_their_verdicts(tmp_path):
    uri, client, exp = fake_store(tmp_path / "studies_only.db", "xkd-cifar100")
    for t, vals in ((1.0, (41.0, 43.0)), (4.0, (45.0, 44.0))):
        for seed, v in enumerate(vals):
            log_run(
                client,
                exp,
                "kd",
                seed,
                {"test_top1": v - 10, "best_val_top1": v},
                params={"hp.temperature": t},
                tags={"xkd.study": "kd-temperature", "xkd.paper_table": ""},
            )
    report = build_report(uri, tmp_path / "r").read_text()
    summary = report.split("## Summary")[1].split("## Leaderboards")[0]
    assert "**Study `kd-temperature`**" in summary and "best on validation temperature=4.0" in summary
    assert "No runs outside studies" in report.split("## Leaderboards")[1].split("## Studies")[0]


def test_fourteen_methods_are_distinguishable_and_keep_their_style():
    from benchmark.plugins import load_plugins
    from benchmark.registry import METHODS
    from reports.figures import styles

    load_plugins()
    names = METHODS.names()
    assert len(names) >= 14
    st = styles(names)
    pairs = {(tuple(s["color"]), s["marker"]) for s in st.values()}
    assert len(pairs) == len(names) and len({tuple(s["color"]) for s in st.values()}) == len(names)
    assert styles(["pkt", "kd"])["kd"] == st["kd"]  # the same style whatever else the figure shows


def test_a_two_line_figure_title_sits_above_every_panel_title(tmp_path, monkeypatch):
    """The synthetic sweep's curves figure (13 methods over the baseline, a heading that wraps to two lines)
    drew its title's second line across the top row's panel titles: the title's box must end above them."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from reports.figures import curves

    labels = ["baseline"] + [f"method_{i}" for i in range(13)]
    series = {lab: {m: [pd.Series([3.0, 2.0, 1.0], index=[1, 2, 3])] * 2 for m in ("loss", "acc")} for lab in labels}
    heading = (
        "Training curves, synthetic: mlp, quick, synth_gamma=1.0, synth_beta=0.0 (one panel per method, mean "
        "over seeds, band: min-max)"
    )
    saved = {}
    real_close = plt.close

    def read_then_close(fig):  # the boxes of the figure as it was saved
        r = fig.canvas.get_renderer()
        saved.update(
            title=fig._suptitle.get_window_extent(r),
            lines=fig._suptitle.get_text().count("\n") + 1,
            panel_top=max(ax.title.get_window_extent(r).y1 for ax in fig.axes if ax.get_title()),
        )
        real_close(fig)

    monkeypatch.setattr(plt, "close", read_then_close)
    curves(series, [("loss", "task CE"), ("acc", "validation top-1")], heading, tmp_path / "c.png")
    assert saved["lines"] == 2
    assert saved["title"].y0 > saved["panel_top"], saved


def _lab(hex_colour: str):
    """CIE L*a*b* (D65) of an sRGB colour, by the textbook formulas."""
    import matplotlib.colors as mc

    rgb = np.array(mc.to_rgb(hex_colour))
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ lin
    f = [v ** (1 / 3) if v > (6 / 29) ** 3 else v / (3 * (6 / 29) ** 2) + 4 / 29 for v in xyz / np.array([0.95047, 1.0, 1.08883])]
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_any_two_methods_of_a_figure_differ_in_colour_plugins_included():
    """Over every registered method and three plugin methods: each pair of colours at least 25 apart (CIE76 ΔE;
    about 2.3 is a just-noticeable difference), and none so light that it vanishes on white (L* <= 70); the
    pale lavender a plugin got and the pkt/ccl, sp/ickd near-twins are gone."""
    import matplotlib.colors as mc

    from benchmark.registry import METHODS
    from reports.figures import styles

    names = METHODS.names() + ["myplugin_a", "myplugin_b", "myplugin_c"]
    labs = {n: _lab(mc.to_hex(s["color"])) for n, s in styles(names).items()}
    worst = min((np.linalg.norm(labs[a] - labs[b]), a, b) for i, a in enumerate(names) for b in names[i + 1 :])
    assert worst[0] >= 25, worst
    assert max(v[0] for v in labs.values()) <= 70


def test_compare_two_stores_shows_an_injected_change(tmp_path):
    a = _store(tmp_path, "a.db")
    b = _store(tmp_path, "b.db", shift=2.0)  # B: kd is 2 points better on every seed, nothing else changed
    res = run_cli_inprocess(["report", "--compare", a, b, "--out", str(tmp_path / "cmp")], tmp_path)
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "cmp" / "compare.md").read_text()
    kd = next(line for line in text.splitlines() if line.startswith("| kd"))
    base = next(line for line in text.splitlines() if line.startswith("| baseline"))
    assert "+2.00 (n=3, no spread)" in kd and "+0.00 (n=3, no spread)" in base
    csv = pd.read_csv(tmp_path / "cmp" / "compare.csv").set_index("configuration")
    assert csv.loc["kd", "test_top1_change"] == pytest.approx(2.0) and csv.loc["pkt", "test_top1_change"] == 0


def test_compare_a_further_metric_beside_the_summary_metrics(tmp_path):
    """--metric NAME adds a column family of its own (e.g. a training loss: did a change move the loss curve?)."""
    a, b = _store(tmp_path, "a.db"), _store(tmp_path, "b.db", shift=2.0)
    res = run_cli_inprocess(["report", "--compare", a, b, "--metric", "wall_s", "--out", str(tmp_path / "cmp")], tmp_path)
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| wall_s B − A, 95% CI |" in text
    kd = next(line for line in text.splitlines() if line.startswith("| kd"))
    assert kd.count("+0.00 (n=3, no spread)") == 1 and "+2.00 (n=3, no spread)" in kd  # wall time unchanged
    csv = pd.read_csv(tmp_path / "cmp" / "compare.csv").set_index("configuration")
    assert csv.loc["kd", "wall_s_change"] == 0 and csv.loc["kd", "wall_s_n_matched"] == 3


def test_compare_refuses_sides_of_different_settings_unless_allowed(tmp_path):
    """A side whose runs ran another number of epochs (or code version) is a confound: refused in one line
    naming each differing field and the --allow flags, nothing written; with those flags it is compared and
    the allowed fields are named in compare.md."""
    a = _store(tmp_path, "a.db")
    b, client, exp = fake_store(tmp_path / "b.db", "xkd-cifar100")
    for seed, v in {0: 31.0, 1: 33.0, 2: 32.0}.items():
        log_run(client, exp, "baseline", seed, {"test_top1": v}, params={"epochs": 8, "code_version": "0.2"})
    res = run_cli_inprocess(["report", "--compare", a, b], tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "cifar100 epochs: " in res.stderr and "--allow epochs" in res.stderr and "--allow code_version" in res.stderr
    assert not (tmp_path / "reports").exists()
    res = run_cli_inprocess(
        ["report", "--compare", a, b, "--allow", "epochs", "--allow", "code_version", "--out", str(tmp_path / "cmp")], tmp_path
    )
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Allowed to differ (`--allow`): epochs, code_version." in text
    assert "+1.00 (n=3, no spread)" in next(line for line in text.splitlines() if line.startswith("| baseline"))


def test_a_store_without_finished_runs_is_one_line_and_exit_2(tmp_path):
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    mlflow.MlflowClient(uri).create_experiment("xkd-cifar100", artifact_location=(tmp_path / "a").as_uri())
    res = run_cli_inprocess(["report", "--tracking-uri", uri, "--out", str(tmp_path / "r")], tmp_path)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "no finished training runs" in res.stderr
    assert not (tmp_path / "r").exists()
    res = run_cli_inprocess(["report", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"], tmp_path)
    assert res.returncode == 2 and "no MLflow store" in res.stderr and not (tmp_path / "none.db").exists()
    assert not (tmp_path / "reports").exists()


def test_run_results_are_numbers_and_two_default_runs_keep_both(tmp_path):
    """results.csv read with pandas has numeric mean/std/n/CI/p columns; two `run`s at once with the default
    --out each keep their own tables (a folder per invocation, `latest` naming one of them)."""
    args = [
        sys.executable,
        "-m",
        "benchmark",
        "run",
        "--task",
        "synthetic",
        "--methods",
        "baseline,kd",
        "--profile",
        "smoke",
        "--seeds",
        "2",
    ]
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    procs = [
        subprocess.Popen(
            [*args, "--set", f"synth_gamma={g}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for g in (0.5, 1.0)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    base = tmp_path / "runs" / "synthetic-smoke"
    folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink() and p.name != "checkpoints")
    assert len(folders) == 2 and (base / "latest").resolve() in [f.resolve() for f in folders]
    for f in folders:
        table = pd.read_csv(f / "results.csv")
        assert list(table["method"]) == ["baseline", "kd"]
        for col in ("test_top1_mean", "test_top1_std", "test_top1_n", "delta", "delta_ci_low", "delta_ci_high", "p", "p_holm"):
            assert pd.api.types.is_numeric_dtype(table[col]), col
        kd = table.set_index("method").loc["kd"]
        assert kd["test_top1_n"] == 2 and kd["delta_n"] == 2
        js = json.loads((f / "results.json").read_text())
        assert js["methods"][1]["method"] == "kd" and isinstance(js["methods"][1]["test_top1_mean"], float)
        assert "± " in (f / "results.md").read_text()
    # the two invocations ran different settings: their tables differ
    assert (
        pd.read_csv(folders[0] / "results.csv")["test_top1_mean"].tolist()
        != pd.read_csv(folders[1] / "results.csv")["test_top1_mean"].tolist()
    )


def test_compare_two_experiments_of_one_store(tmp_path):
    """`--compare A B` with experiment names reads both from --tracking-uri's store."""
    uri = _store(tmp_path, "one.db")
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("xkd-cifar100-v2", artifact_location=(tmp_path / "art-v2").as_uri())
    for seed, b in {0: 30.0, 1: 32.0, 2: 31.0}.items():
        log_run(client, exp, "baseline", seed, {"test_top1": b - 1.0})  # the new recipe: 1 point lower each seed
    res = run_cli_inprocess(
        ["report", "--tracking-uri", uri, "--compare", "xkd-cifar100", "xkd-cifar100-v2", "--out", str(tmp_path / "cmp")],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "cmp" / "compare.md").read_text()
    base = next(line for line in text.splitlines() if line.startswith("| baseline"))
    assert "-1.00 (n=3, no spread)" in base
    kd = next(line for line in text.splitlines() if line.startswith("| kd"))
    assert "no matched seed" in kd  # B has no kd runs: nothing is invented
    res = run_cli_inprocess(["report", "--tracking-uri", uri, "--compare", "xkd-cifar100", "nosuch"], tmp_path)
    assert res.returncode == 2 and "no experiment 'nosuch'" in res.stderr
