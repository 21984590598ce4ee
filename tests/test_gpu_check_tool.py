"""tools/gpu_check.py's dry run (what CI can run: no CUDA device, or ``--device cpu``): the CPU
parts of each section run and report, every CUDA part says it was skipped, exit status 0, and
the file goes only where ``--out`` says. (Figures are the tool's business, never asserted here.)"""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    cmd = [sys.executable, os.path.join(REPO, "tools", "gpu_check.py"), "--device", "cpu", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_dry_run(tmp_path):
    out = tmp_path / "gpu.md"
    res = run_tool("--quick", "--out", str(out))
    text = out.read_text()
    assert "dry run" in text.splitlines()[0] and "--device cpu --quick --out" in text
    for section in ("## 1. The device path", "## 2. Equality", "## 3. Determinism", "## 4. Memory",
                    "## 5. Speed"):
        assert section in text
    # section 1: the counts of the device path within issue 27's limits, the plan path's for contrast,
    # and the kernels built for sm_90
    counts = {tuple(c.strip() for c in r.split("|")[1:4]): r.split("|")[4:6] for r in text.splitlines()
              if r.startswith("| gather") or r.startswith("| grid_sample")}
    for pooler_type in ("ROIAlignV2", "ROIAlignRotated"):
        for direction in ("forward", "backward"):
            calls, reads = (int(v) for v in counts[(f"gather {pooler_type}", "device", direction)])
            assert calls <= 100 and reads <= 2
            assert int(counts[(f"gather {pooler_type}", "plan", direction)][0]) > calls
    assert len([r for r in text.splitlines() if r.startswith("| forward:") or r.startswith("| backward:")]) == 6
    # CUDA parts skipped, and said so: section 2's CUDA rows, 3's CUDA rows and training, all of 4 and 5
    assert text.count("skipped: no CUDA device") == 4
    assert "| cuda" not in text and "Section" not in text  # no CUDA row, no section stopped by an error
    # the CPU parts ran: section 2's float32 CPU rows of every pooler type and sampler, all within bounds
    rows = [r.split("|")[1:-1] for r in text.splitlines() if r.startswith("| ROIAlign")]
    assert len(rows) == 3 * 2 * 2 and all(r[2].strip() == "cpu, float32" for r in rows)
    assert all(r[-1].strip() == "yes" for r in rows)
    assert "Equality: 12 rows ok, 0 not." in text
    # section 3's CPU determinism check: every implementation ran with and without the flag
    det = [r for r in text.splitlines() if r.startswith("| plugin") or r.startswith("| Detectron2")]
    assert len(det) == 3 and all(r.count("runs;") == 2 for r in det)
    assert f"wrote {out}" in res.stderr


@pytest.mark.slow
def test_dry_run_writes_no_file_unless_asked():
    """results/gpu.md holds GPU figures only: a dry run without --out prints, and writes nothing."""
    results = os.path.join(REPO, "results", "gpu.md")
    before = os.stat(results).st_mtime_ns if os.path.exists(results) else None
    res = run_tool("--sections", "5")
    assert "skipped: no CUDA device" in res.stdout and "not written" in res.stderr
    assert (os.stat(results).st_mtime_ns if os.path.exists(results) else None) == before
