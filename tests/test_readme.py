"""README is a front door whose numbers have a source: its results tables are exactly what
scripts/readme_results.py generates from the example reports' CSVs, and it stays short."""

import subprocess
import sys

from conftest import ROOT


def test_readmes_results_tables_are_generated_from_the_example_csvs():
    sys.path.insert(0, str(ROOT / "scripts"))
    import readme_results

    readme = (ROOT / "README.md").read_text()
    assert readme_results.tables() in readme, (
        "README's results tables differ from the CSVs: run `python scripts/readme_results.py --write`"
    )
    assert readme_results.confirmatory().count("| [`") == len(readme_results.PROTOCOLS)


def test_the_script_prints_the_tables():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_results.py")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("<!-- results tables") and "| **" not in out.stdout.split("\n")[0]


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 200, f"README has {len(lines)} lines: details go to docs/"
    text = "\n".join(lines)
    for section in ("## Set up and run the tests", "## Main command", "## Tasks and their data", "## Results"):
        assert section in text
    assert "/work/" not in text and "/tmp/ci" not in text
