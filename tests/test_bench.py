"""Every script in bench/ runs in its smoke setting (tiny sizes, seconds each), and bench/all.py gathers their table.

The benches are command-line scripts, so each runs as a process, as a user
runs it (forked from one that has TensorFlow imported, tests/forkserver.py): a
refactor that breaks one (an import, a renamed argument) fails here. Nothing is
timed: the figures are the benches' business.
"""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import forkserver
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


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BENCHES))
def test_bench_runs_in_its_smoke_setting(name, tmp_path):
    """``python bench/NAME.py SMOKE-ARGUMENTS`` (forked from a process with TensorFlow imported: the start is not what is tested)."""
    summary = tmp_path / f"bench_{name}.json"
    command = [sys.executable, os.path.join(BENCH, f"{name}.py"), *BENCHES[name][1]]
    if name not in ("device", "compare_step", "memory", "serve"):  # as bench/all.py passes it
        command += ["--summary", str(summary)]
    finished = forkserver.run(command, REPO, dict(os.environ), timeout=600)
    assert finished.returncode == 0, (finished.stdout[-3000:], finished.stderr[-5000:])
    assert "Traceback" not in finished.stderr
    if summary.exists():  # a bench with headline ratios hands back numbers
        handed = json.loads(summary.read_text())
        assert handed["bench"] == name and handed["device"].startswith("CPU:") and handed["rows"], handed
        assert all(float(value) >= 0 for _, value in handed["rows"]), handed


@pytest.mark.slow
def test_all_runs_the_benches_it_is_given_and_writes_one_table(tmp_path):
    out = tmp_path / "bench.md"
    command = [sys.executable, os.path.join(BENCH, "all.py"), "--smoke", "--only", "device", "model", "--out", str(out)]
    finished = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:]
    table = out.read_text()
    assert table.startswith("CPU:") and "FAILED" not in table, table  # the device comes first
    rows = [line.split("|")[1:4] for line in table.splitlines() if line.startswith(("| device |", "| model |"))]
    assert {row[0].strip() for row in rows} == {"device", "model"}, table
    assert all(float(row[2]) >= 0 for row in rows if row[0].strip() == "model"), table
    assert (tmp_path / "bench_model.log").exists() and (tmp_path / "bench_device.log").exists()
