# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The rotated shapes dataset: each annotation is the object that was drawn, measured by OpenCV
(``minAreaRect`` of the mask's pixels, the principal axis of its image moments), in
Detectron2's angle convention as its own code draws and converts boxes (``Visualizer``,
``BoxMode``); plus determinism, the long-side form, the cache and the registration."""
import json

import cv2
import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode, RotatedBoxes
from detectron2.utils.visualizer import Visualizer

import roi_plugin.data  # noqa: F401  registers shapes_rotated_train / _val
from roi_plugin.data import shapes_rotated
from roi_plugin.layers.rotated_ops import pairwise_iou_rotated_float64

N_IMAGES = 40


def samples(base=5, n=N_IMAGES):
    """(image, annotation, mask) of every object of ``n`` generated images."""
    out = []
    for i in range(n):
        image, annos, masks = shapes_rotated.generate_rotated_image([base, i], return_masks=True)
        out += [(image, a, m) for a, m in zip(annos, masks)]
    return out


def cv2_box(mask):
    """OpenCV's minimum-area rectangle of the mask's pixel centres, in Detectron2's form: the
    long side's direction (dx, dy) in the image gives the angle atan2(-dy, dx) (the width vector
    of a Detectron2 box at angle a is (cos a, -sin a), y pointing down)."""
    ys, xs = np.nonzero(mask)
    pts = np.stack([xs + 0.5, ys + 0.5], axis=1).astype(np.float32)  # pixel i spans [i, i + 1]
    rect = cv2.minAreaRect(pts)
    corners = cv2.boxPoints(rect)
    e1, e2 = corners[1] - corners[0], corners[2] - corners[1]
    long, short = (e1, e2) if np.linalg.norm(e1) >= np.linalg.norm(e2) else (e2, e1)
    angle = np.degrees(np.arctan2(-long[1], long[0]))
    return np.array([*rect[0], np.linalg.norm(long), np.linalg.norm(short), angle])


def moments_angle(mask):
    """The principal axis of the mask's second moments (OpenCV), in Detectron2's angle sense."""
    m = cv2.moments(mask.astype(np.uint8), binaryImage=True)
    return -np.degrees(0.5 * np.arctan2(2 * m["mu11"], m["mu20"] - m["mu02"]))


def angle_diff(a, b):
    """a - b modulo 180, in [-90, 90): a box is the same turned by 180 degrees."""
    return (a - b + 90.0) % 180.0 - 90.0


def test_generation_is_deterministic():
    a_img, a_ann = shapes_rotated.generate_rotated_image([7, 3])
    b_img, b_ann = shapes_rotated.generate_rotated_image([7, 3])
    c_img, _ = shapes_rotated.generate_rotated_image([7, 4])
    assert np.array_equal(a_img, b_img) and a_ann == b_ann
    assert not np.array_equal(a_img, c_img)


def test_annotations_are_long_side_boxes_inside_the_image():
    """w >= 1.5 h (no square or circle: the angle is defined), angle in [-90, 90), every class
    present, the box inside the 256x256 image, area the drawn pixels."""
    seen = set()
    for image, a, mask in samples():
        cx, cy, w, h, angle = a["bbox"]
        assert w >= 1.5 * h - 1e-6 and h >= shapes_rotated.MIN_SHORT - 1e-6
        assert -90.0 <= angle < 90.0
        x0, y0, x1, y1 = BoxMode.convert(a["bbox"], BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS)
        assert x0 >= 0 and y0 >= 0 and x1 <= image.shape[1] and y1 <= image.shape[0]
        assert a["area"] == mask.sum() and a["iscrowd"] == 0
        seen.add(a["category_id"])
    assert seen == set(range(len(shapes_rotated.ROTATED_CLASSES)))


def test_boxes_are_the_minimum_area_rectangles_of_the_drawn_objects():
    """OpenCV's minAreaRect of each drawn mask: same centre (1 px), sides (the pixel centres lie
    up to a pixel inside the outline, a pointed bow more), and angle (4 degrees; an ellipse's
    minimum rectangle turns freely, so its angle is checked by the moments below); rotated IoU
    0.9 on average and 0.85 for objects other than ellipses at least 15 px wide (a 7-px side one
    pixel short is 14% off)."""
    ious, wide = [], []
    for _, a, mask in samples():
        box = np.array(a["bbox"])
        ref = cv2_box(mask)
        assert np.abs(ref[:2] - box[:2]).max() <= 1.0, (a, ref)
        assert -3.5 <= ref[2] - box[2] <= 0.5 and -2.0 <= ref[3] - box[3] <= 0.5, (a, ref)
        if shapes_rotated.ROTATED_CLASSES[a["category_id"]] != "ellipse":
            assert abs(angle_diff(ref[4], box[4])) <= 4.0, (a, ref)
        iou = pairwise_iou_rotated_float64(torch.tensor(box[None]), torch.tensor(ref[None]))[0, 0].item()
        ious.append(iou)
        if box[3] >= 15 and shapes_rotated.ROTATED_CLASSES[a["category_id"]] != "ellipse":
            wide.append(iou)
    assert min(ious) > 0.7 and np.mean(ious) > 0.9 and min(wide) > 0.85, (min(ious), np.mean(ious), min(wide))


def test_angles_are_the_principal_axes_of_the_drawn_objects():
    """The long axis of each mask's second moments (OpenCV) is the box's angle within 2 degrees,
    for every class; the counter-clockwise sign is what a mirrored convention would get wrong."""
    n_tilted = 0
    for _, a, mask in samples():
        assert abs(angle_diff(moments_angle(mask), a["bbox"][4])) <= 2.0, a
        n_tilted += 20 <= abs(a["bbox"][4]) <= 70
    assert n_tilted >= 20  # angles whose sign matters (not near 0 or 90)


def on_outline(box, mask):
    """(pixels of Detectron2's Visualizer drawing of ``box`` within 2.5 px of the mask's outline,
    all its pixels): its lines are about 3 px wide."""
    h, w = mask.shape
    vis = Visualizer(np.zeros((h, w, 3), dtype=np.uint8), scale=1.0)
    drawn = vis.draw_rotated_box_with_label(list(box), edge_color="w").get_image()[..., 0] > 127
    edge = mask ^ cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    dist = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 3)  # px to the outline
    return int((dist[drawn] <= 2.5).sum()), int(drawn.sum())


def test_detectron2_draws_and_converts_the_boxes_on_the_objects():
    """Detectron2's own geometry of XYWHA_ABS, against the drawn masks: its Visualizer's rotated
    box (corners from RotatedBoxes' formula) lies on each rectangle's outline (the mirrored angle
    does not), and BoxMode's XYWHA -> XYXY conversion bounds each mask (a rectangle's exactly)."""
    near = total = near_mirrored = total_mirrored = 0
    for image, a, mask in samples(n=15):
        h, w = mask.shape
        x0, y0, x1, y1 = BoxMode.convert(a["bbox"], BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS)
        ys, xs = np.nonzero(mask)
        assert xs.min() >= x0 - 0.5 and xs.max() + 1 <= x1 + 0.5, a
        assert ys.min() >= y0 - 0.5 and ys.max() + 1 <= y1 + 0.5, a
        if shapes_rotated.ROTATED_CLASSES[a["category_id"]] != "rectangle":
            continue  # the other outlines touch their box only at a few points
        # a rectangle fills its box: its corners are the extremes of the upright extent
        assert abs(xs.min() - x0) <= 1.5 and abs(xs.max() + 1 - x1) <= 1.5, a
        assert abs(ys.min() - y0) <= 1.5 and abs(ys.max() + 1 - y1) <= 1.5, a
        n, t = on_outline(a["bbox"], mask)
        near, total = near + n, total + t
        if 20 <= abs(a["bbox"][4]) <= 70:
            n, t = on_outline(a["bbox"][:4] + [-a["bbox"][4]], mask)
            near_mirrored, total_mirrored = near_mirrored + n, total_mirrored + t
    assert total > 0 and near >= 0.95 * total, (near, total)
    assert total_mirrored > 0 and near_mirrored < 0.5 * total_mirrored, (near_mirrored, total_mirrored)


def test_the_same_rectangle_mirrored_would_be_caught():
    """The checks above tell the angle's sign: the mirrored angle is far from the moments."""
    far = [abs(angle_diff(moments_angle(m), -a["bbox"][4])) for _, a, m in samples(n=10)
           if 20 <= abs(a["bbox"][4]) <= 70]
    assert far and min(far) > 20


def test_objects_do_not_touch_and_rows_are_parallel():
    """Objects are apart (no mask pixel of one within 1 px of another), and some images hold a
    row of 2+ parallel objects of one class (equal angles)."""
    rows = 0
    for i in range(N_IMAGES):
        _, annos, masks = shapes_rotated.generate_rotated_image([5, i], return_masks=True)
        for j in range(len(masks)):
            grown = cv2.dilate(masks[j].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            for k in range(j + 1, len(masks)):
                assert not (grown & masks[k]).any()
        angles = [(a["category_id"], a["bbox"][4]) for a in annos]
        rows += len(angles) != len(set(angles))
    assert rows >= 5


@pytest.fixture
def tiny_splits(monkeypatch, tmp_path):
    monkeypatch.setattr(shapes_rotated, "SPLITS", {"train": (5, 11), "val": (3, 12)})
    return tmp_path / "cache"


def test_cache_and_registration(tiny_splits):
    d = shapes_rotated.ensure_rotated_split("val", tiny_splits)
    assert d.parent.name == f"shapes_rotated_v{shapes_rotated.GENERATOR_VERSION}"
    coco = json.loads((d / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(shapes_rotated.ROTATED_CLASSES)
    assert len(coco["images"]) == 3 and all(len(a["bbox"]) == 5 for a in coco["annotations"])
    img = d / "images" / "val_00001.png"
    img.write_bytes(img.read_bytes()[:50])  # corrupt: rebuilt on the next use
    name = "shapes_rotated_val_tiny_for_test"
    if name not in DatasetCatalog.list():
        shapes_rotated.register_shapes_rotated_instances(name, "val", tiny_splits)
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 3
    for rec, image in zip(dicts, coco["images"]):
        ours = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert [a["bbox"] for a in rec["annotations"]] == [a["bbox"] for a in ours]
        assert all(a["bbox_mode"] == BoxMode.XYWHA_ABS for a in rec["annotations"])
        RotatedBoxes(torch.tensor([a["bbox"] for a in rec["annotations"]]))  # Detectron2 takes them
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == list(shapes_rotated.ROTATED_CLASSES) and meta.bbox_mode == "XYWHA_ABS"
    assert meta.json_file == str(d / "annotations.json") and meta.evaluator_type == "coco"
    assert {"shapes_rotated_train", "shapes_rotated_val"} <= set(DatasetCatalog.list())
