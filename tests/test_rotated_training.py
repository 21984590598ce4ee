# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The rotated detector end to end on CPU, as a user runs it: tools/train_net.py on
configs/rotated/rrcnn_R_18_FPN_plugin.yaml (2 iterations of a tiny model on the built-in
``shapes_rotated_val``), evaluated by Detectron2's RotatedCOCOEvaluator on a rotated COCO file
given with ``--dataset`` (8 images, 5-number bboxes); its pictures; tools/demo.py on the trained
model; and the one-line errors for bad rotated files and for boxes that do not fit the model.
"""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.evaluation import RotatedCOCOEvaluator
from detectron2.structures import RotatedBoxes

from roi_plugin.data import ensure_rotated_split
from roi_plugin.data.rotated_mapper import RotatedDatasetMapper
from roi_plugin.engine.train import Trainer, is_rotated_model, load_cfg

from helpers import REPO, SHAPES_CONFIG, load_tool, shipped_cfg

CONFIG = REPO / "configs" / "rotated" / "rrcnn_R_18_FPN_plugin.yaml"
CLASSES = ("rectangle", "ellipse", "ship", "capsule")
TINY = [
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2", "SOLVER.MAX_ITER", "2",
    "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.PRE_NMS_TOPK_TEST", "100",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "TEST.DETECTIONS_PER_IMAGE", "5",
    "DATALOADER.NUM_WORKERS", "0",
]


@pytest.fixture(scope="module")
def rotated_val():
    split = ensure_rotated_split("val")
    return split / "annotations.json", split / "images"


def _coco(rotated_val, n):
    coco = json.loads(rotated_val[0].read_text())
    coco["images"] = coco["images"][:n]
    ids = {im["id"] for im in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    return coco


@pytest.fixture(scope="module")
def trained(rotated_val, tmp_path_factory):
    """2 iterations on shapes_rotated_val, evaluated on an 8-image rotated COCO file (--dataset)."""
    out = tmp_path_factory.mktemp("rotated_run")
    small = out / "small.json"
    small.write_text(json.dumps(_coco(rotated_val, 8)))
    argv = ["--config-file", str(CONFIG), "--dataset", f"rot_small:{small}:{rotated_val[1]}", *TINY,
            "DATASETS.TRAIN", "('shapes_rotated_val',)", "DATASETS.TEST", "('rot_small',)",
            "OUTPUT_DIR", str(out)]
    assert load_tool("train_net").cli(argv) == 0
    return out


def test_rotated_configs_pick_the_rotated_mapper_and_evaluator(tmp_path):
    cfg = shipped_cfg("rotated/rrcnn_R_18_FPN_plugin.yaml", "OUTPUT_DIR", str(tmp_path))
    assert is_rotated_model(cfg) and is_rotated_model(shipped_cfg("rotated/rrcnn_R_18_FPN_builtin.yaml"))
    assert not is_rotated_model(shipped_cfg("shapes/mask_rcnn_plugin.yaml"))
    assert tuple(cfg.DATASETS.TRAIN) == ("shapes_rotated_train",)
    assert tuple(cfg.DATASETS.TEST) == ("shapes_rotated_val",)
    cfg.DATALOADER.NUM_WORKERS = 0
    loader = Trainer.build_test_loader(cfg, "shapes_rotated_val")  # generates the split first
    assert isinstance(loader.dataset._map_func._obj, RotatedDatasetMapper)
    assert isinstance(Trainer.build_evaluator(cfg, "shapes_rotated_val"), RotatedCOCOEvaluator)


@pytest.mark.slow
def test_train_and_evaluate_writes_rotated_results(trained):
    record = json.loads((trained / "final_metrics.json").read_text())
    res = record["results"]
    assert set(res) == {"bbox"}  # boxes only
    assert {"AP", "AP50", "AP75"} | {f"AP-{c}" for c in CLASSES} <= set(res["bbox"])
    # RotatedCOCOEvaluator's file: every prediction is a 5-number rotated box on the 8 images
    preds = json.loads((trained / "inference" / "coco_instances_results.json").read_text())
    assert preds and all(len(p["bbox"]) == 5 for p in preds)
    assert {p["image_id"] for p in preds} <= set(range(1, 9))
    rows = [json.loads(line) for line in open(trained / "metrics.json")]
    assert max(r["iteration"] for r in rows if "total_loss" in r) == 1
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(rows[0])
    for name in ("model_final.pth", "config.yaml", "predictions.png", "loss_curves.png", "roi_crops.png"):
        assert (trained / name).is_file(), name


@pytest.mark.slow
def test_demo_draws_and_records_rotated_boxes(trained, rotated_val, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    names = [f"val_{i:05d}.png" for i in range(2)]
    for n in names:
        shutil.copy(rotated_val[1] / n, images / n)
    out = tmp_path / "out"
    weights = trained / "model_final.pth"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py"), "--config-file", str(CONFIG),
         "--input", str(images),
         "--output", str(out), "--confidence-threshold", "0", *TINY, "MODEL.WEIGHTS", str(weights)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    record = json.loads((out / "detections.json").read_text())
    assert record["box_mode"] == "XYWHA_ABS" and record["thing_classes"] == list(CLASSES)
    cfg = load_cfg(str(CONFIG), [*TINY, "MODEL.WEIGHTS", str(weights),
                                 "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    predictor = DefaultPredictor(cfg)
    total = 0
    for rec, n in zip(record["images"], names):
        inst = predictor(read_image(rec["file"], format="BGR"))["instances"].to("cpu")
        assert isinstance(inst.pred_boxes, RotatedBoxes)
        total += len(inst)
        assert rec["classes"] == inst.pred_classes.tolist()
        assert rec["class_names"] == [CLASSES[c] for c in rec["classes"]]
        torch.testing.assert_close(torch.tensor(rec["scores"]).reshape(-1), inst.scores, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(rec["boxes"]).reshape(-1, 5), inst.pred_boxes.tensor,
                                   atol=0.01, rtol=0)
        assert "masks" not in rec
        picture = read_image(str(out / n), format="RGB")
        assert not np.array_equal(picture, read_image(str(images / n), format="RGB"))  # boxes drawn
    assert total > 0


# ------------------------------------------------------------------------------------------
# One-line errors (nothing is built or written)
# ------------------------------------------------------------------------------------------
def _error(capsys, argv):
    rc = load_tool("train_net").cli(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("train_net.py: error: "), err
    return err


@pytest.mark.parametrize("kind", ["mixed", "six_numbers", "negative_width", "not_finite"])
def test_bad_rotated_json_exits_with_one_line(capsys, tmp_path, rotated_val, kind):
    coco = _coco(rotated_val, 3)
    anns = coco["annotations"]
    if kind == "mixed":
        anns[2]["bbox"] = anns[2]["bbox"][:4]
        expected = ["annotations[2]", "has 4 numbers but annotations[0] has 5", "not both"]
    elif kind == "six_numbers":
        anns[1]["bbox"] = anns[1]["bbox"] + [1.0]
        expected = ["annotations[1]", "is not [x_ctr, y_ctr, width, height, angle]"]
    elif kind == "negative_width":
        anns[1]["bbox"][2] = -3.0
        expected = ["annotations[1]", "negative width or height"]
    else:
        anns[0]["bbox"][4] = float("nan")
        expected = ["annotations[0]", "non-finite"]
    path = tmp_path / f"{kind}.json"
    path.write_text(json.dumps(coco))
    name = f"bad_rot_{kind}"
    err = _error(capsys, ["--config-file", str(CONFIG), "--dataset", f"{name}:{path}:{rotated_val[1]}",
                          "DATASETS.TRAIN", f"('{name}',)", "OUTPUT_DIR", str(tmp_path / "out")])
    assert f"dataset '{name}'" in err and str(path) in err
    for text in expected:
        assert text in err, err
    assert not (tmp_path / "out").exists()


def test_boxes_that_do_not_fit_the_model_exit_with_one_line(capsys, tmp_path, rotated_val):
    # rotated boxes, upright model
    spec = f"rot_for_upright:{rotated_val[0]}:{rotated_val[1]}"
    err = _error(capsys, ["--config-file", str(SHAPES_CONFIG), "--dataset", spec, "DATASETS.TRAIN",
                          "('rot_for_upright',)", "MODEL.MASK_ON", "False", "OUTPUT_DIR", str(tmp_path)])
    assert "has rotated boxes" in err and "configs/rotated/rrcnn_R_18_FPN_plugin.yaml" in err
    err = _error(capsys, ["--config-file", str(SHAPES_CONFIG), "DATASETS.TRAIN", "('shapes_rotated_val',)",
                          "OUTPUT_DIR", str(tmp_path)])
    assert "'shapes_rotated_val' has rotated boxes" in err
    # upright boxes, rotated model
    err = _error(capsys, ["--config-file", str(CONFIG), "DATASETS.TRAIN", "('shapes_val',)",
                          "OUTPUT_DIR", str(tmp_path)])
    assert "'shapes_val' has upright boxes" in err and "[x_ctr, y_ctr, width, height, angle]" in err
