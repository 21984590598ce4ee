"""tools/benchmark.py, a small subset in CI: the busy-core condition really runs another
process, and a quick run writes a table per condition and the targets. (Timings are the
tool's business, never asserted here.)"""
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

from bench.conditions import busy_core  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (/proc/PID/stat, fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_busy_core_runs_a_spinning_process_and_stops_it():
    with busy_core(True) as busy:
        assert busy.proc.poll() is None
        t0, c0 = time.monotonic(), cpu_seconds(busy.proc.pid)
        time.sleep(1.0)
        share = (cpu_seconds(busy.proc.pid) - c0) / (time.monotonic() - t0)
        assert share > 0.3  # it spins (a core shared with this test's own work at worst)
    assert busy.proc.poll() is not None  # killed and reaped
    with busy_core(False) as idle:
        assert idle.proc is None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.md"
    cmd = [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--quick", "--reps", "1", "--no-model",
           "--cases", "mask_r0", "--conditions", "1thread", "busy", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out.read_text()


def test_quick_run_has_a_table_per_condition_and_the_targets(quick_run):
    text = quick_run
    assert "## Targets" in text and "## 1 thread" in text
    assert "## 2 threads, one core busy with another process" in text
    assert "## 2 threads, idle machine" not in text  # not asked for
    rows = [line for line in text.splitlines() if line.startswith("| training, mask 14x14")]
    # 2 modes x 2 implementations (grid_sample is measured in the idle condition only) x 2 conditions
    assert len(rows) == 8
    assert not any("grid_sample" in r for r in rows)
    target = next(line for line in text.splitlines() if line.startswith("| time, mask 14x14 fwd+bwd"))
    cells = [c.strip() for c in target.strip("|").split("|")]
    assert cells[1] == "0.4x" and all(c.endswith(("yes", "**no**")) for c in cells[2:])


def test_profile_summary(tmp_path):
    md = tmp_path / "profile.md"
    cmd = [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--quick", "--profile",
           "gather:mask_r0:fwd+bwd", "--conditions", "1thread", "--label", "test", "--profile-md", str(md)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    text = md.read_text()
    assert text.startswith("### test: `gather:mask_r0:fwd+bwd`")
    assert "**1 thread**" in text and "op calls" in text and "ms (" in text
