# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Your own data: tools/train_net.py --dataset NAME:JSON:DIR and tools/demo.py.

The "own" dataset is the shapes val split's COCO JSON as written by its generator (training) and
an 8-image COCO file cut from it (evaluation, so that evaluating stays cheap). The model is tiny
(R18-FPN at 128 pixels, 2 iterations), trained once for the whole module.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor

from roi_plugin.data import ensure_shapes_split
from roi_plugin.engine.train import load_cfg

from helpers import REPO, SHAPES_CONFIG as CONFIG, SHAPES_TINY, load_tool

TINY = [
    *SHAPES_TINY, "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128", "SOLVER.MAX_ITER", "2",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "TEST.DETECTIONS_PER_IMAGE", "5",  # a 2-iteration model is unsure: every score is near 0.2
]


@pytest.fixture(scope="module")
def shapes_val():
    split = ensure_shapes_split("val")
    return split / "annotations.json", split / "images"


def _coco(shapes_val, n=3):
    """The first ``n`` images of shapes_val and their annotations (COCO JSON as a dict)."""
    coco = json.loads(shapes_val[0].read_text())
    coco["images"] = coco["images"][:n]
    ids = {im["id"] for im in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    return coco


@pytest.fixture(scope="module")
def small_json(shapes_val, tmp_path_factory):
    """The first 8 images of shapes_val and their annotations, as a COCO file."""
    coco = _coco(shapes_val, 8)
    path = tmp_path_factory.mktemp("coco") / "small.json"
    path.write_text(json.dumps(coco))
    return path


@pytest.fixture(scope="module")
def trained(shapes_val, small_json, tmp_path_factory):
    """train_net.py --dataset (twice) with DATASETS / NUM_CLASSES overrides: 2 iterations, then
    COCO evaluation on the 8-image file."""
    out = tmp_path_factory.mktemp("run")
    ann, images = shapes_val
    argv = ["--config-file", str(CONFIG), "--no-pictures",
            "--dataset", f"own_train:{ann}:{images}", "--dataset", f"own_val:{small_json}:{images}",
            *TINY, "DATASETS.TRAIN", "('own_train',)", "DATASETS.TEST", "('own_val',)",
            "MODEL.ROI_HEADS.NUM_CLASSES", "4", "OUTPUT_DIR", str(out)]
    assert load_tool("train_net").cli(argv) == 0
    return out


@pytest.mark.slow
def test_train_and_evaluate_on_a_coco_json(trained):
    record = json.loads((trained / "final_metrics.json").read_text())
    res = record["results"]
    assert set(res) >= {"bbox", "segm"}  # masks were loaded from the JSON's segmentations
    for task in ("bbox", "segm"):
        # Per-class AP under the JSON's category names: the evaluator read our file.
        assert {f"AP-{c}" for c in ("circle", "square", "triangle", "star")} <= set(res[task])
    rows = [json.loads(line) for line in open(trained / "metrics.json")]
    assert max(r["iteration"] for r in rows if "total_loss" in r) == 1  # iterations 0 and 1
    assert (trained / "model_final.pth").is_file()


# ------------------------------------------------------------------------------------------
# Bad input: one line each, before training
# ------------------------------------------------------------------------------------------
def _bad(kind, shapes_val, tmp_path):
    """(json path, expected fragments) of one kind of bad input."""
    path = tmp_path / f"{kind}.json"
    coco = _coco(shapes_val)
    if kind == "missing":
        return path, ["annotations file not found", str(path)]
    if kind == "not_json":
        path.write_text(json.dumps(coco)[:-40])
        return path, [str(path), "not valid JSON", "line 1"]
    if kind == "not_utf8":
        path.write_bytes(b'{"images": "\xff\xfe\xfa"}')
        return path, [str(path), "cannot read"]
    if kind == "no_annotations":
        del coco["annotations"]
        path.write_text(json.dumps(coco))
        return path, [str(path), "'annotations' is missing"]
    if kind == "image_absent":
        coco["images"][1]["file_name"] = "no_such_image.png"
        path.write_text(json.dumps(coco))
        return path, [str(path), "images[1]", f"id {coco['images'][1]['id']}", "'no_such_image.png' not found"]
    if kind == "unknown_category":
        coco["annotations"][2]["category_id"] = 9
        path.write_text(json.dumps(coco))
        return path, [str(path), "annotations[2]", f"id {coco['annotations'][2]['id']}", "category_id 9",
                      "not in categories (ids 1, 2, 3, 4)"]
    if kind == "bad_bbox":
        coco["annotations"][0]["bbox"] = [1, 2, 3]
        path.write_text(json.dumps(coco))
        return path, [str(path), "annotations[0]", "bbox [1, 2, 3]"]
    raise AssertionError(kind)


def _one_line_error(capsys, argv, tool="train_net"):
    rc = load_tool(tool).cli(argv) if tool == "train_net" else load_tool(tool).main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith(f"{tool}.py: error: "), err
    return err


@pytest.mark.parametrize("kind", ["missing", "not_json", "not_utf8", "no_annotations", "image_absent",
                                  "unknown_category", "bad_bbox"])
def test_bad_coco_input_exits_with_one_line(capsys, tmp_path, shapes_val, kind):
    path, expected = _bad(kind, shapes_val, tmp_path)
    name = f"bad_{kind}"
    err = _one_line_error(capsys, ["--config-file", str(CONFIG), "--dataset", f"{name}:{path}:{shapes_val[1]}",
                                   "DATASETS.TRAIN", f"('{name}',)", "OUTPUT_DIR", str(tmp_path / "out")])
    assert f"dataset '{name}'" in err
    for text in expected:
        assert text in err
    assert not (tmp_path / "out").exists()  # stopped before anything was set up


def test_num_classes_mismatch_names_both_numbers(capsys, tmp_path, shapes_val):
    err = _one_line_error(capsys, ["--config-file", str(CONFIG), "--dataset", f"own5:{shapes_val[0]}:{shapes_val[1]}",
                                   "DATASETS.TRAIN", "('own5',)", "MODEL.ROI_HEADS.NUM_CLASSES", "5",
                                   "OUTPUT_DIR", str(tmp_path)])
    assert "'own5' has 4 categories" in err and str(shapes_val[0]) in err
    assert "NUM_CLASSES is 5" in err and "MODEL.ROI_HEADS.NUM_CLASSES 4" in err


@pytest.mark.parametrize("spec", ["justaname", "name:only.json", ":a.json:dir"])
def test_bad_dataset_spec_exits_with_one_line(capsys, tmp_path, spec):
    err = _one_line_error(capsys, ["--config-file", str(CONFIG), "--dataset", spec, "OUTPUT_DIR", str(tmp_path)])
    assert "NAME:ANNOTATIONS_JSON:IMAGE_DIR" in err


def test_boxes_only_json_with_mask_on_exits_with_one_line(capsys, tmp_path, shapes_val):
    coco = _coco(shapes_val)
    for a in coco["annotations"]:
        del a["segmentation"]
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(coco))
    err = _one_line_error(capsys, ["--config-file", str(CONFIG), "--dataset", f"boxes_only:{path}:{shapes_val[1]}",
                                   "DATASETS.TRAIN", "('boxes_only',)", "OUTPUT_DIR", str(tmp_path)])
    assert "no segmentation" in err and "MODEL.MASK_ON False" in err


# ------------------------------------------------------------------------------------------
# tools/demo.py
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_writes_pictures_and_the_models_predictions(trained, shapes_val, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    names = [f"val_{i:05d}.png" for i in range(3)]
    for n in names:
        shutil.copy(shapes_val[1] / n, images / n)
    (images / "broken.png").write_bytes(b"not an image")
    (images / "notes.txt").write_text("not an image either, and not picked up from a folder")
    out = tmp_path / "out"
    weights = trained / "model_final.pth"
    # As a user runs it: a subprocess, a folder as input, threshold 0 (a 2-iteration model is unsure).
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py"), "--config-file", str(CONFIG), "--input", str(images),
         "--output", str(out), "--confidence-threshold", "0", *TINY, "MODEL.WEIGHTS", str(weights)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    log = proc.stdout + proc.stderr  # Detectron2's logger writes to stdout, tqdm to stderr
    assert proc.returncode == 0, log[-2000:]
    assert "skipping" in log and "broken.png" in log and "4/4" in log  # warning, progress
    assert "3 image(s), " in log and "1 unreadable image(s) skipped" in log
    record = json.loads((out / "detections.json").read_text())
    assert [Path(r["file"]).name for r in record["images"]] == names
    assert [Path(s["file"]).name for s in record["skipped"]] == ["broken.png"]
    for n in names:
        picture = read_image(str(out / n), format="RGB")
        original = read_image(str(images / n), format="RGB")
        assert picture.shape == original.shape and not np.array_equal(picture, original)  # drawn on

    # The JSON holds what the model predicts for these images (Detectron2's DefaultPredictor).
    from pycocotools import mask as mask_util

    cfg = load_cfg(str(CONFIG), [*TINY, "MODEL.WEIGHTS", str(weights), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    predictor = DefaultPredictor(cfg)
    total = 0
    for rec in record["images"]:
        inst = predictor(read_image(rec["file"], format="BGR"))["instances"].to("cpu")
        total += len(inst)
        assert rec["classes"] == inst.pred_classes.tolist()
        assert rec["class_names"] == [("circle", "square", "triangle", "star")[c] for c in rec["classes"]]
        torch.testing.assert_close(torch.tensor(rec["scores"]).reshape(-1), inst.scores, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(rec["boxes"]).reshape(-1, 4), inst.pred_boxes.tensor,
                                   atol=0.01, rtol=0)
        decoded = np.stack([mask_util.decode(m) for m in rec["masks"]]) if rec["masks"] else np.zeros((0, 256, 256))
        assert np.array_equal(decoded.astype(bool), inst.pred_masks.numpy())
    assert total > 0 and f"3 image(s), {total} detection(s)" in log


@pytest.mark.slow
def test_demo_with_nothing_readable_exits_non_zero(capsys, trained, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00" * 10)
    rc = load_tool("demo").main(["--config-file", str(CONFIG), "--input", str(bad), str(tmp_path / "gone.png"),
                                  "--output", str(tmp_path / "out"), *TINY,
                                  "MODEL.WEIGHTS", str(trained / "model_final.pth")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip().splitlines()[-1] == "demo.py: error: none of the 2 input(s) could be read as an image"
    assert json.loads((tmp_path / "out" / "detections.json").read_text())["images"] == []


@pytest.mark.parametrize("opts, expected", [
    ([], "no weights: add MODEL.WEIGHTS"),
    (["MODEL.WEIGHTS", "nope.pth"], "MODEL.WEIGHTS file not found: nope.pth"),
])
def test_demo_bad_weights_exit_with_one_line(capsys, tmp_path, opts, expected):
    err = _one_line_error(capsys, ["--config-file", str(CONFIG), "--input", str(tmp_path),
                                   "--output", str(tmp_path / "o"), *opts], tool="demo")
    assert expected in err
