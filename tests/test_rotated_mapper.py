# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""RotatedDatasetMapper: the boxes it gives the model after flips and resizes are the objects
in the transformed image (OpenCV on the transformed masks) and Detectron2's own rotated-box math
(``HFlipTransform`` / ``ResizeTransform.apply_rotated_box``, ``RotatedBoxes.scale``), in the
long-side form; and what it refuses."""
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import transforms as T
from detectron2.structures import BoxMode, RotatedBoxes

from roi_plugin.data import RotatedDatasetMapper, shapes_rotated
from roi_plugin.data.rotated_mapper import long_side_form
from roi_plugin.layers.rotated_ops import pairwise_iou_rotated_float64

from helpers import shipped_cfg


def angle_diff(a, b):
    return (np.asarray(a) - np.asarray(b) + 90.0) % 180.0 - 90.0


def moments_angle(mask):
    m = cv2.moments(mask.astype(np.uint8), binaryImage=True)
    return -np.degrees(0.5 * np.arctan2(2 * m["mu11"], m["mu20"] - m["mu02"]))


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """A generated image with tilted objects as a Detectron2 dataset dict, and its masks."""
    for i in range(50):
        image, annos, masks = shapes_rotated.generate_rotated_image([21, i], return_masks=True)
        if len(annos) >= 3 and sum(20 <= abs(a["bbox"][4]) <= 70 for a in annos) >= 2:
            break
    path = tmp_path_factory.mktemp("img") / "image.png"
    Image.fromarray(image).save(path)
    rec = {"file_name": str(path), "height": 256, "width": 256, "image_id": 0,
           "annotations": [dict(a, bbox_mode=BoxMode.XYWHA_ABS) for a in annos]}
    return rec, masks


def mapped(rec, augmentations):
    mapper = RotatedDatasetMapper(is_train=True, augmentations=augmentations, image_format="RGB")
    out = mapper(rec)
    assert isinstance(out["instances"].gt_boxes, RotatedBoxes)
    return out, out["instances"].gt_boxes.tensor.double().numpy()


def rect_centre(mask):
    """The centre of OpenCV's minimum-area rectangle of the mask's pixel centres."""
    ys, xs = np.nonzero(mask)
    return np.array(cv2.minAreaRect(np.stack([xs + 0.5, ys + 0.5], axis=1).astype(np.float32))[0])


def check_against_masks(boxes, masks, scale=1.0):
    """Each box is its transformed object: the centre of the mask's minimum-area rectangle
    (1 px), the mask's principal axis (2 degrees), long-side form."""
    assert len(boxes) == len(masks)
    for box, mask in zip(boxes, masks):
        assert np.abs(rect_centre(mask) - box[:2]).max() <= 1.0 * scale, box
        assert abs(angle_diff(moments_angle(mask), box[4])) <= 2.0, box
        assert box[2] >= box[3] and -90 <= box[4] < 90


def test_horizontal_flip(record):
    rec, masks = record
    out, boxes = mapped(rec, [T.RandomFlip(prob=1.0, horizontal=True, vertical=False)])
    image = out["image"].permute(1, 2, 0).numpy()
    assert np.array_equal(image, np.asarray(Image.open(rec["file_name"]))[:, ::-1])
    check_against_masks(boxes, [m[:, ::-1] for m in masks])
    # Detectron2's rule: x -> W - x, angle -> -angle; then the long-side form
    orig = np.array([a["bbox"] for a in rec["annotations"]])
    ref = long_side_form(T.HFlipTransform(256).apply_rotated_box(orig.copy()))
    np.testing.assert_allclose(boxes, ref, atol=1e-4)
    np.testing.assert_allclose(boxes[:, 4], angle_diff(-orig[:, 4], 0), atol=1e-4)  # mirrored angles


def test_uniform_resize(record):
    rec, masks = record
    out, boxes = mapped(rec, [T.ResizeShortestEdge(384, 384)])
    assert tuple(out["image"].shape[1:]) == (384, 384)
    big = [cv2.resize(m.astype(np.uint8), (384, 384), interpolation=cv2.INTER_NEAREST).astype(bool)
           for m in masks]
    check_against_masks(boxes, big, scale=1.5)
    orig = np.array([a["bbox"] for a in rec["annotations"]])
    np.testing.assert_allclose(boxes[:, :4], orig[:, :4] * 1.5, atol=1e-3)
    np.testing.assert_allclose(boxes[:, 4], orig[:, 4], atol=1e-4)


def test_unequal_resize_is_detectron2s_rotated_boxes_scale(record):
    """A resize to 320 wide and 192 high: the mapper's boxes are ``RotatedBoxes.scale(1.25,
    0.75)``, Detectron2's approximation (the image of a tilted rectangle is a parallelogram),
    then the long-side form."""
    rec, _ = record
    _, boxes = mapped(rec, [T.Resize((192, 320))])
    orig = RotatedBoxes(torch.tensor([a["bbox"] for a in rec["annotations"]], dtype=torch.float64))
    orig.scale(320 / 256, 192 / 256)
    np.testing.assert_allclose(boxes, long_side_form(orig.tensor.numpy()), atol=1e-3)


def test_docs_unequal_resize_turns_long_boxes_with_their_short_side():
    """docs/rotated.md: under unequal x/y scales Detectron2's rule (``apply_rotated_box`` of
    ``ResizeTransform``, ``RotatedBoxes.scale``) turns a box as its height vector turns, so a
    long box is off by the difference: a 4:1 box at -17.7 degrees stretched 1.25 x 0.75 gets
    -28.0 where its long sides run at -10.8. At 0 and 90 degrees, and for equal scales (what
    ResizeShortestEdge does), it is exact."""
    resize = T.ResizeTransform(256, 256, 192, 320)  # h, w -> new_h, new_w

    def long_side_direction(box, sx, sy):  # the width vector (cos a, -sin a), scaled
        t = np.radians(box[4])
        return np.degrees(np.arctan2(sy * np.sin(t), sx * np.cos(t)))

    box = np.array([[100.0, 100.0, 80.0, 20.0, -17.7]])
    ours = resize.apply_rotated_box(box.copy())[0, 4]
    assert abs(ours - -28.0) < 0.1 and abs(long_side_direction(box[0], 1.25, 0.75) - -10.8) < 0.1
    for angle in (0.0, 90.0, -90.0):
        b = np.array([[100.0, 100.0, 80.0, 20.0, angle]])
        turned = resize.apply_rotated_box(b.copy())[0, 4]
        assert abs(angle_diff(turned, long_side_direction(b[0], 1.25, 0.75))) < 1e-6
    same = T.ResizeTransform(256, 256, 384, 384).apply_rotated_box(box.copy())
    np.testing.assert_allclose(same, [[150.0, 150.0, 120.0, 30.0, -17.7]], atol=1e-9)


def test_long_side_form():
    boxes = np.array([
        [10, 10, 20, 5, 30],     # already long-side
        [10, 10, 5, 20, 30],     # tall: swapped, +90 -> 120 -> -60
        [10, 10, 20, 5, 90],     # the +90 end wraps to -90
        [10, 10, 20, 5, -90],    # kept
        [10, 10, 20, 5, 200],    # 200 = 20 mod 180
        [10, 10, 8, 8, 135],     # a square: any angle of its class, here 135 -> -45
    ], dtype=np.float64)
    out = long_side_form(boxes)
    np.testing.assert_allclose(out[:, 2:], [[20, 5, 30], [20, 5, -60], [20, 5, -90], [20, 5, -90],
                                            [20, 5, 20], [8, 8, -45]])
    # the same rectangles (rotated IoU 1 with the input)
    iou = pairwise_iou_rotated_float64(torch.tensor(boxes), torch.tensor(out)).diagonal()
    torch.testing.assert_close(iou, torch.ones(len(boxes), dtype=torch.float64))


def test_upright_and_empty_annotations(record, tmp_path):
    rec, _ = record
    upright = dict(rec, annotations=[{"bbox": [10, 20, 30, 12], "bbox_mode": BoxMode.XYWH_ABS,
                                      "category_id": 1}])
    _, boxes = mapped(upright, [])
    np.testing.assert_allclose(boxes, [[25, 26, 30, 12, 0]])
    out, boxes = mapped(dict(rec, annotations=[]), [])
    assert boxes.shape == (0, 5) and len(out["instances"].gt_classes) == 0


def test_config_and_refusals():
    cfg = shipped_cfg("rotated/rrcnn_R_18_FPN_plugin.yaml")
    mapper = RotatedDatasetMapper(cfg, is_train=True)
    kinds = [type(a).__name__ for a in mapper.augmentations.augs]
    assert kinds == ["ResizeShortestEdge", "RandomFlip"]
    cfg.INPUT.CROP.ENABLED = True
    with pytest.raises(ValueError, match="crop rotated boxes"):
        RotatedDatasetMapper(cfg, is_train=True)
    cfg.INPUT.CROP.ENABLED = False
    cfg.MODEL.MASK_ON = True
    with pytest.raises(ValueError, match="without masks"):
        RotatedDatasetMapper(cfg, is_train=True)
