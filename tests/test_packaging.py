"""Packaging: the wheel that ``pip install .`` builds holds the whole library and nothing else,
declares every package the library imports, and works outside the checkout: imported from where
it was installed (not from the source tree or the editable install), it generates the shapes
dataset under the working directory (or ``$ROI_PLUGIN_DATASETS``), and the ONNX modules import
without the ``[deploy]`` extra, failing only when used, with an error that names the extra."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("layers", "modeling", "export", "engine", "data")
# Neither declarable (not on the package index under its own name) nor third-party; and triton,
# which torch's CUDA builds install with themselves and which the library imports only where it is
# present (layers/device_path.py falls back to the CPU plan path without it): declaring it would
# put it on CPU-only installs for nothing.
UNDECLARED = {"detectron2", "roi_plugin", "triton"}


def _name(req: str) -> str:
    """Canonical distribution name of a requirement string (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", req).group(0)).lower()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build the wheel from a copy of the checkout (no ``build/`` left over from another build,
    nothing written into the checkout), as ``pip install .`` would."""
    src = tmp_path_factory.mktemp("src") / "roi_plugin_src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "output", "outputs", "datasets", "build", "dist", "*.egg-info", "__pycache__",
        ".pytest_cache", ".hypothesis", ".cache"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("roi_plugin-*.whl")
    return path


def test_wheel_holds_the_library_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    in_wheel = {n for n in names if n.startswith("roi_plugin/") and n.endswith(".py")}
    in_source = {p.relative_to(REPO).as_posix() for p in (REPO / "roi_plugin").rglob("*.py")}
    assert in_wheel == in_source
    for sub in SUBPACKAGES:
        assert f"roi_plugin/{sub}/__init__.py" in names
    tops = {n.split("/")[0] for n in names}
    assert not tops & {"tests", "tools", "configs", "scripts"}, tops


def _imports(path: Path):
    """(module-level, inside functions) top-level module names imported by one file; imports
    under ``if TYPE_CHECKING:`` are for annotations only and are skipped."""
    tree = ast.parse(path.read_text())
    top, nested = set(), set()

    def names(node):
        if isinstance(node, ast.Import):
            return {a.name.split(".")[0] for a in node.names}
        if isinstance(node, ast.ImportFrom) and not node.level:
            return {node.module.split(".")[0]}
        return set()

    def walk(nodes, module_level):
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            (top if module_level else nested).update(names(node))
            inner = module_level and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            walk(ast.iter_child_nodes(node), inner)

    walk(tree.body, True)
    return top, nested


def test_wheel_declares_every_import_of_the_library(wheel):
    """What the library imports at module level is in ``install_requires``; what it imports only
    inside a function (onnx) is in ``install_requires`` or the ``[deploy]`` extra."""
    meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    requires = {}
    for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:"):
            req = line.split(":", 1)[1].strip()
            extra = re.search(r'extra == "(\w+)"', req)
            requires.setdefault(extra.group(1) if extra else "", set()).add(_name(req))
    dists = {m: {_name(d) for d in ds} for m, ds in packages_distributions().items()}
    missing = []
    for path in sorted((REPO / "roi_plugin").rglob("*.py")):
        top, nested = _imports(path)
        for module, allowed in [(m, requires[""]) for m in top] + [
                (m, requires[""] | requires["deploy"]) for m in nested]:
            if module in UNDECLARED or module in sys.stdlib_module_names:
                continue
            if not dists.get(module, set()) & allowed:
                missing.append(f"{path.relative_to(REPO)}: {module} ({sorted(dists.get(module, ()))})")
    assert not missing, missing
    # the test extra pulls in what the tests need of the other extras
    assert requires["deploy"] | requires["tools"] <= requires["test"]


SMOKE = r"""
import json, os, sys
sys.modules["onnx"] = None  # as if the [deploy] extra were not installed
import roi_plugin, roi_plugin.data
from roi_plugin.data import shapes
from roi_plugin.export import onnx_batch
from detectron2.data import MetadataCatalog
out = {"file": roi_plugin.__file__, "root": str(shapes.shapes_root()),
       "registered_json": MetadataCatalog.get("shapes_val").json_file}
shapes.SPLITS = {"val": (2, 2)}  # a tiny split: generation from the installed copy
out["split"] = str(shapes.ensure_shapes_split("val"))
out["pad_batch"] = [list(a.shape) for a in onnx_batch.pad_batch([__import__("torch").zeros(3, 4, 5)])]
try:
    onnx_batch.export_batched_onnx("a.onnx", "b.onnx", 10)
except ImportError as e:
    out["onnx_error"] = str(e)
print("SMOKE " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check",
         "-q", "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def _smoke(target, cwd, **env):
    env = {**{k: v for k, v in os.environ.items() if k not in ("ROI_PLUGIN_DATASETS", "PYTHONPATH")},
           "PYTHONPATH": str(target), **env}
    proc = subprocess.run([sys.executable, "-c", SMOKE], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("SMOKE "))
    return json.loads(line[len("SMOKE "):])


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_checkout(installed, tmp_path):
    cwd = (tmp_path / "work").resolve()
    cwd.mkdir()
    out = _smoke(installed, cwd)
    # imported from the install, not from the checkout nor the editable install of the venv
    assert Path(out["file"]).resolve().is_relative_to(installed.resolve()), out["file"]
    assert Path(out["root"]) == cwd / "datasets"
    assert Path(out["registered_json"]).is_relative_to(cwd / "datasets")  # shapes_val, fixed at import
    split = Path(out["split"])
    assert split.is_relative_to(cwd / "datasets") and (split / "annotations.json").is_file()
    assert len(list((split / "images").iterdir())) == 2
    assert out["pad_batch"] == [[1, 3, 4, 5], [1, 2]]
    assert "roi_plugin[deploy]" in out["onnx_error"]


@pytest.mark.slow
def test_installed_wheel_takes_the_dataset_folder_from_the_environment(installed, tmp_path):
    cwd, cache = (tmp_path / "work").resolve(), (tmp_path / "cache").resolve()
    cwd.mkdir()
    out = _smoke(installed, cwd, ROI_PLUGIN_DATASETS=str(cache))
    assert Path(out["root"]) == cache and Path(out["split"]).is_relative_to(cache)
    assert not (cwd / "datasets").exists()
