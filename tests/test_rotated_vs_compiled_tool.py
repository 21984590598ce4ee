"""tools/rotated_vs_compiled.py: without a compiled Detectron2 it stops with a one-line error;
with one (a build from source on PYTHONPATH), a tiny run writes the comparison table.
(The figures are the tool's business, never asserted here.)"""
import os
import subprocess
import sys

import pytest

from helpers import REPO, detectron2_compiled


def run_tool(*args):
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p)
    env = dict(os.environ, PYTHONPATH=path)
    cmd = [sys.executable, str(REPO / "tools" / "rotated_vs_compiled.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


@pytest.mark.slow
@pytest.mark.skipif(detectron2_compiled(), reason="this Detectron2 has its compiled _C")
def test_without_compiled_detectron2_one_line_error(tmp_path):
    res = run_tool("--out", str(tmp_path / "out.md"))
    assert res.returncode != 0 and "has no compiled _C" in res.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out.md").exists()


@pytest.mark.slow
@pytest.mark.skipif(not detectron2_compiled(), reason="needs Detectron2's compiled _C (a build from source)")
def test_tiny_run_writes_the_table(tmp_path):
    out = tmp_path / "out.md"
    res = run_tool("--rois", "4", "--channels", "4", "--reps", "1", "--ratios", "2", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    text = out.read_text()
    assert "with compiled _C" in text and "--rois 4 --channels 4" in text
    rows = [line for line in text.splitlines() if line.startswith("| 2 |")]
    assert [r.split("|")[2].strip() for r in rows] == ["gather", "grid_sample"]
    assert all(r.rstrip(" |").endswith("x") for r in rows)
