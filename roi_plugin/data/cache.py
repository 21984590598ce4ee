# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The on-disk cache of a generated dataset: generate a split on first use, atomically, verify it
by its manifest on every load, rebuild it when it is incomplete, corrupt or outdated.

A :class:`GeneratedDataset` names a generator (one seeded call per image returning the image and
its COCO annotations), its version and its splits. A split lives in
``<root>/<name>_v<version>/<split>/`` (``images/``, ``annotations.json``, ``MANIFEST.json``).
It is written into a temporary directory, the manifest (the SHA-256 of every file) last, then
renamed into place, so readers see either nothing, the old split or the complete new one; an
exclusive lock on the root makes concurrent processes (DDP ranks) generate it once. The upright
shapes (:mod:`.shapes`) and the rotated shapes (:mod:`.shapes_rotated`) are two such datasets.
"""
import contextlib
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from PIL import Image

__all__ = ["ENV_VAR", "GeneratedDataset", "dataset_root", "ensure_split", "split_dir", "verify_split"]

logger = logging.getLogger(__name__)

ENV_VAR = "ROI_PLUGIN_DATASETS"


@dataclass(frozen=True)
class GeneratedDataset:
    """What the cache needs to know of a generated dataset.

    Attributes:
        name: folder prefix and name in messages ("shapes", "shapes_rotated").
        version: the generator's version; bump it when its output changes, so that an older
            cache is rebuilt, never reused.
        splits: split -> (number of images, base seed); image ``i`` is drawn from ``[seed, i]``.
        generate: ``generate(seed_seq) -> (image (H, W, 3) uint8, annotations)``, a module-level
            function (it is sent to worker processes); annotations are COCO dicts with a 0-based
            ``category_id``.
        classes: the category names, in ``category_id`` order.
    """

    name: str
    version: int
    splits: Dict[str, Tuple[int, int]]
    generate: Callable
    classes: Tuple[str, ...]


def dataset_root() -> Path:
    """The cache directory: ``$ROI_PLUGIN_DATASETS``, or ``datasets/`` under the current working
    directory, as an absolute path (fixed when a split is registered). Never derived from where
    the package is installed, which may be a read-only site-packages."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().absolute()
    return Path.cwd() / "datasets"


def split_dir(ds: GeneratedDataset, root: Path, split: str) -> Path:
    return Path(root) / f"{ds.name}_v{ds.version}" / split


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_image(job):
    generate, out_dir, split, seed, idx = job
    image, annos = generate([seed, idx])
    file_name = f"{split}_{idx:05d}.png"
    Image.fromarray(image).save(out_dir / "images" / file_name, compress_level=1)
    return file_name, image.shape[:2], annos


def _write_split(ds: GeneratedDataset, out_dir: Path, split: str) -> None:
    """Generate a split into ``out_dir`` (images/, annotations.json, MANIFEST.json last)."""
    num_images, seed = ds.splits[split]
    (out_dir / "images").mkdir(parents=True)
    jobs = [(ds.generate, out_dir, split, seed, idx) for idx in range(num_images)]
    workers = min(len(os.sched_getaffinity(0)), 8)
    if workers > 1:
        # Each image has its own seed, so the result does not depend on the worker count.
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_write_image, jobs, chunksize=16)
    else:
        results = [_write_image(j) for j in jobs]
    images, annotations = [], []
    for idx, (file_name, (height, width), annos) in enumerate(results):
        images.append({"id": idx + 1, "file_name": file_name, "height": height, "width": width})
        for a in annos:
            a = dict(a, id=len(annotations) + 1, image_id=idx + 1, category_id=a["category_id"] + 1)
            annotations.append(a)
    coco = {
        "info": {"description": f"roi_plugin synthetic {ds.name}, {split}", "version": ds.version},
        "images": images,
        "annotations": annotations,
        # COCO ids are 1-based; load_coco_json maps them to contiguous 0-based ids.
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(ds.classes)],
    }
    with open(out_dir / "annotations.json", "w") as f:
        json.dump(coco, f)
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    manifest = {
        "generator_version": ds.version,
        "split": split,
        "num_images": num_images,
        "seed": seed,
        "files": {name: _sha256(out_dir / name) for name in files},
    }
    # Written last: a split without a complete manifest is by definition half-written.
    with open(out_dir / "MANIFEST.json", "w") as f:
        json.dump(manifest, f, indent=0, sort_keys=True)


def verify_split(ds: GeneratedDataset, directory: Path, split: str) -> Optional[str]:
    """Why the cached split is unusable (a short reason), or None if it is complete and intact."""
    directory = Path(directory)
    manifest_path = directory / "MANIFEST.json"
    if not manifest_path.is_file():
        return "no MANIFEST.json (missing or half-written)"
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        return f"unreadable MANIFEST.json ({e})"
    num_images, seed = ds.splits[split]
    expected = {"generator_version": ds.version, "split": split, "num_images": num_images, "seed": seed}
    for k, v in expected.items():
        if manifest.get(k) != v:
            return f"MANIFEST.json has {k}={manifest.get(k)!r}, expected {v!r}"
    files = manifest.get("files", {})
    if len(files) != num_images + 1:
        return f"MANIFEST.json lists {len(files)} files, expected {num_images + 1}"
    on_disk = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}
    if on_disk - {"MANIFEST.json"} != set(files):
        return "files on disk differ from MANIFEST.json"
    for name, digest in files.items():
        if _sha256(directory / name) != digest:
            return f"{name} does not match its SHA-256 in MANIFEST.json"
    return None


@contextlib.contextmanager
def _locked(root: Path):
    """An exclusive lock on the cache dir, so concurrent processes (DDP ranks) generate once."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".shapes.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_split(ds: GeneratedDataset, split: str, root: Optional[Path] = None) -> Path:
    """Return the directory of a verified split, generating (or rebuilding) it if needed.

    Args:
        root: cache directory; default :func:`dataset_root`.
    Returns:
        the split directory, holding ``images/`` and ``annotations.json``.
    """
    if split not in ds.splits:
        raise ValueError(f"unknown {ds.name} split {split!r}; expected one of {sorted(ds.splits)}")
    root = Path(root) if root is not None else dataset_root()
    directory = split_dir(ds, root, split)
    try:
        with _locked(root):
            reason = verify_split(ds, directory, split) if directory.exists() else "not generated yet"
            if reason is None:
                return directory
            if directory.exists():
                logger.warning(f"Rebuilding the {ds.name} '{split}' cache at {directory}: {reason}")
            logger.info(f"Generating the {ds.name} '{split}' split ({ds.splits[split][0]} images) "
                        f"into {directory}")
            directory.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{split}.tmp-", dir=directory.parent))
            try:
                _write_split(ds, tmp, split)
                if directory.exists():
                    stale = Path(tempfile.mkdtemp(prefix=f".{split}.stale-", dir=directory.parent))
                    os.replace(directory, stale / "old")
                    shutil.rmtree(stale)
                os.replace(tmp, directory)  # atomic: readers see the old dir or the complete new one
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp)
            return directory
    except OSError as e:
        raise OSError(
            f"cannot write the {ds.name} dataset cache under {root} ({e.strerror or e}); "
            f"set ${ENV_VAR} to a writable directory"
        ) from e
