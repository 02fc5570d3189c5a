"""A plugin that cannot be imported, or that takes a name already registered, is one line and exit 2 (issue 29)."""

import os

import pytest

from conftest import run_cli


@pytest.mark.parametrize(
    "body,needles",
    [
        ("def broken(:\n    pass\n", ["--plugin badplug.mod: syntax error in", "line 1"]),
        ("raise RuntimeError('no licence file')\n", ["importing it raised RuntimeError: no licence file", "line 1"]),
        ("import not_a_module_anywhere\n", ["importing it failed: No module named 'not_a_module_anywhere'"]),
        (
            "from benchmark.method import Method, register\n@register('kd', 'a second kd')\nclass KD2(Method):\n    pass\n",
            ["method 'kd' is registered already (by methods.kd)"],
        ),
    ],
)
def test_a_broken_plugin_is_one_line_and_exit_2(tmp_path, body, needles):
    pkg = tmp_path / "ext" / "badplug"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(body)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "ext"), os.environ.get("PYTHONPATH", "")])}
    res = run_cli(["--plugin", "badplug.mod", "list"], tmp_path, extra_env=env)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert "--plugin badplug.mod" in lines[0] or "registered already" in lines[0]
