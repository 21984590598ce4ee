# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The built-in shapes dataset: determinism, annotation consistency (checked with pycocotools
and Detectron2's level rule), cache integrity, and registration."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling.poolers import assign_boxes_to_levels

import roi_plugin.data  # noqa: F401  registers shapes_train / shapes_val
from roi_plugin.data import shapes


def _rasterize(segm, h, w):
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects(segm, h, w))).astype(bool)


def test_generation_is_deterministic():
    a_img, a_ann = shapes.generate_shapes_image([7, 3])
    b_img, b_ann = shapes.generate_shapes_image([7, 3])
    c_img, _ = shapes.generate_shapes_image([7, 4])
    assert np.array_equal(a_img, b_img) and a_ann == b_ann
    assert not np.array_equal(a_img, c_img)


def test_annotations_match_their_masks():
    """Polygons (rasterized by pycocotools) agree with bbox and area, and visible parts of
    different objects do not overlap: the later object occludes the earlier one."""
    n_occluded = 0
    for idx in range(30):
        img, annos = shapes.generate_shapes_image([11, idx])
        h, w = img.shape[:2]
        assert len(annos) >= 1
        masks = []
        for a in annos:
            assert 0 <= a["category_id"] < len(shapes.SHAPES_CLASSES)
            m = _rasterize(a["segmentation"], h, w)
            ys, xs = np.nonzero(m)
            x, y, bw, bh = a["bbox"]
            # Polygon rasterization and pixel masks differ by at most a pixel or two at the edges.
            assert abs(xs.min() - x) <= 2 and abs(ys.min() - y) <= 2
            assert abs(xs.max() + 1 - (x + bw)) <= 2 and abs(ys.max() + 1 - (y + bh)) <= 2
            assert abs(m.sum() - a["area"]) <= 0.1 * a["area"] + 20
            masks.append(m)
        for i in range(len(masks)):
            for j in range(i + 1, len(masks)):
                inter = (masks[i] & masks[j]).sum()
                assert inter <= 0.1 * min(masks[i].sum(), masks[j].sum()) + 30
        n_occluded += sum(len(a["segmentation"][0]) > 2 * 48 for a in annos)
    assert n_occluded > 0  # some objects are cut by others (their polygon is a traced contour)


def test_fpn_levels_p2_to_p4_get_ground_truth_boxes():
    """Detectron2's level rule puts sqrt(wh) = 224 at P4, so on 256-pixel images boxes reach
    P2..P4; P5 (>= 448 px) is out of reach whatever the objects."""
    boxes = []
    for idx in range(150):
        _, annos = shapes.generate_shapes_image([3, idx])
        boxes += [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annos)]
    from detectron2.structures import Boxes

    levels = assign_boxes_to_levels([Boxes(torch.tensor(boxes))], 2, 5, 224, 4)
    counts = torch.bincount(levels, minlength=4)  # P2, P3, P4, P5
    assert (counts[:3] >= 10).all(), counts


@pytest.fixture
def tiny_splits(monkeypatch, tmp_path):
    monkeypatch.setattr(shapes, "SPLITS", {"train": (6, 1), "val": (4, 2)})
    return tmp_path / "cache"


def _snapshot(split_dir):
    return {p.name: p.read_bytes() for p in sorted(split_dir.rglob("*")) if p.is_file()}


def test_cache_is_reused_verified_and_rebuilt(tiny_splits):
    d = shapes.ensure_shapes_split("val", tiny_splits)
    assert shapes.verify_shapes_split(d, "val") is None
    coco = json.loads((d / "annotations.json").read_text())
    assert len(coco["images"]) == 4 and [c["name"] for c in coco["categories"]] == list(shapes.SHAPES_CLASSES)
    ref = _snapshot(d)
    mtime = (d / "MANIFEST.json").stat().st_mtime_ns
    assert shapes.ensure_shapes_split("val", tiny_splits) == d
    assert (d / "MANIFEST.json").stat().st_mtime_ns == mtime  # reused, not regenerated

    # A corrupt image is detected and the split rebuilt, byte for byte.
    img = d / "images" / "val_00002.png"
    img.write_bytes(img.read_bytes()[:100])
    assert "val_00002.png" in shapes.verify_shapes_split(d, "val")
    shapes.ensure_shapes_split("val", tiny_splits)
    assert _snapshot(d) == ref

    # A half-written split (no manifest yet) is never used.
    (d / "MANIFEST.json").unlink()
    assert "MANIFEST" in shapes.verify_shapes_split(d, "val")
    shapes.ensure_shapes_split("val", tiny_splits)
    assert _snapshot(d) == ref

    # A missing file, or an extra one, is detected too.
    (d / "images" / "val_00000.png").unlink()
    assert shapes.verify_shapes_split(d, "val") is not None
    shapes.ensure_shapes_split("val", tiny_splits)
    assert _snapshot(d) == ref
    assert not [p for p in d.parent.iterdir() if p.name.startswith(".val.")]  # no temp dirs left


def test_other_generator_version_is_rebuilt(tiny_splits, monkeypatch):
    d = shapes.ensure_shapes_split("val", tiny_splits)
    manifest = json.loads((d / "MANIFEST.json").read_text())
    manifest["generator_version"] = -1
    (d / "MANIFEST.json").write_text(json.dumps(manifest))
    assert "generator_version" in shapes.verify_shapes_split(d, "val")
    shapes.ensure_shapes_split("val", tiny_splits)
    assert shapes.verify_shapes_split(d, "val") is None


def test_unknown_split_and_unwritable_root(tmp_path):
    with pytest.raises(ValueError, match="unknown shapes split"):
        shapes.ensure_shapes_split("test", tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match="ROI_PLUGIN_DATASETS"):
        shapes.ensure_shapes_split("val", blocker / "cache")


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ROI_PLUGIN_DATASETS", str(tmp_path))
    assert shapes.shapes_root() == tmp_path


def test_cache_dir_defaults_to_the_working_directory(monkeypatch, tmp_path):
    """Without $ROI_PLUGIN_DATASETS: datasets/ under the working directory (the repository's own
    for ./run.sh), as an absolute path, never a folder found from where the package lies."""
    monkeypatch.delenv("ROI_PLUGIN_DATASETS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert shapes.shapes_root() == Path.cwd() / "datasets"
    assert shapes.shapes_root().resolve() == (tmp_path / "datasets").resolve()
    monkeypatch.setenv("ROI_PLUGIN_DATASETS", "relative/cache")
    assert shapes.shapes_root() == Path.cwd() / "relative" / "cache"


def test_registered_as_detectron2_coco_datasets(tiny_splits):
    assert {"shapes_train", "shapes_val"} <= set(DatasetCatalog.list())
    assert MetadataCatalog.get("shapes_val").thing_classes == list(shapes.SHAPES_CLASSES)
    name = "shapes_val_tiny_for_test"
    if name not in DatasetCatalog.list():
        shapes.register_shapes_instances(name, "val", tiny_splits)
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 4
    ann = dicts[0]["annotations"][0]
    assert isinstance(ann["segmentation"], list) and len(ann["segmentation"][0]) >= 6
    assert {a["category_id"] for d in dicts for a in d["annotations"]} <= set(range(4))
    assert MetadataCatalog.get(name).json_file.endswith("annotations.json")
