"""Guards the set-up, not the library: the torch range that setup.cfg declares is the one that
``TORCH=X.Y.Z ./run.sh test`` can test. scripts/bootstrap.sh keeps the table of torch /
torchvision pairs the suite has been run against (docs/testing.md, "Against another torch");
setup.cfg's floor is its oldest torch, and a version not in the table stops the set-up with one
line, before anything is created or installed.
"""
import os
import re
import shutil
import subprocess

from helpers import REPO


def _tested_pairs():
    text = (REPO / "scripts" / "bootstrap.sh").read_text()
    table = re.search(r"declare -A TORCHVISION_FOR=\(([^)]*)\)", text).group(1)
    return dict(re.findall(r"\[([\d.]+)\]=([\d.]+)", table))


def _version(v):
    return tuple(int(p) for p in v.split("."))


def test_declared_torch_floor_is_the_oldest_tested_torch():
    pairs = _tested_pairs()
    assert pairs["2.14.1"] == "0.29.1"  # the default set-up's pair
    floor = re.search(r"^\s*torch>=([\d.]+)\s*$", (REPO / "setup.cfg").read_text(), re.M).group(1)
    oldest = min(pairs, key=_version)
    assert _version(oldest)[:len(_version(floor))] == _version(floor), (floor, oldest)
    # torchvision 0.(N+15) goes with torch 2.N in every release since 2.0
    for torch_v, vision_v in pairs.items():
        assert _version(vision_v)[:2] == (0, _version(torch_v)[1] + 15), (torch_v, vision_v)


def test_untested_torch_stops_with_one_line(tmp_path):
    for name in ("run.sh", "setup.cfg"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "bootstrap.sh", tmp_path / "scripts" / "bootstrap.sh")
    env = dict(os.environ, TORCH="2.3.1")
    r = subprocess.run(["bash", str(tmp_path / "run.sh"), "test"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "TORCH=2.3.1 is not a tested pair" in lines[0], r.stderr
    assert "torch 2.4.1 + torchvision 0.19.1" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.sh", "scripts", "setup.cfg"]  # no venv made
