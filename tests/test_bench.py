"""Every script in bench/ runs in its smoke setting, through bench/all.py (tiny sizes, seconds each).

The benches are command-line scripts, so each runs as a process, as a user
runs it: a refactor that breaks one (an import, a renamed argument) fails
here. Nothing is timed: the figures are the benches' business.
"""

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")


def load_bench_list() -> dict:
    spec = importlib.util.spec_from_file_location("bench_all", os.path.join(BENCH, "all.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BENCHES


BENCHES = load_bench_list()


def test_every_script_is_listed():
    scripts = {os.path.basename(path)[:-3] for path in glob.glob(os.path.join(BENCH, "*.py"))}
    assert scripts - {"all", "common"} == set(BENCHES)


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_bench_runs_in_its_smoke_setting(name, tmp_path):
    out = tmp_path / "bench.md"
    command = [sys.executable, os.path.join(BENCH, "all.py"), "--smoke", "--only", name, "--out", str(out)]
    finished = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    log = tmp_path / f"bench_{name}.log"
    assert finished.returncode == 0, (finished.stdout[-3000:], log.read_text()[-5000:] if log.exists() else "")
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith(f"| {name} |")]
    assert rows and "FAILED" not in table, table
    assert "CPU:" in table  # the device comes first
    if (tmp_path / f"bench_{name}.json").exists():  # a bench with headline ratios hands back numbers
        values = [line.split("|")[3].strip() for line in rows]
        assert all(float(value) >= 0 for value in values), rows
