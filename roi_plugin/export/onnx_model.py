# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Whole-model deployment: trace a Detectron2 R-CNN (plugin or built-in heads) with Detectron2's
own ``TracingAdapter``, export it to ONNX, and compare onnxruntime with the eager model.

The graph is what ``tools/deploy/export_model.py --export-method tracing`` of Detectron2 builds:
``GeneralizedRCNN.inference(do_postprocess=False)`` on one image tensor (3, H, W), BGR/RGB as
``INPUT.FORMAT`` says, pixel values 0..255. Outputs are the flattened ``Instances``:
``pred_boxes`` (N, 4) in the input image's pixels, ``scores`` (N,), ``pred_classes`` (N,), and,
for Mask R-CNN, ``pred_masks`` (N, 1, M, M) ROI mask probabilities (pasted into the image outside
the graph, by :func:`detectron2.modeling.postprocessing.detector_postprocess`, as Detectron2 does).
Height and width of the image and the number of detections are dynamic axes.

The number of images is not: Detectron2's RPN and ROI post-processing (top-k per level, NMS,
score threshold) loop over the images in Python, and the adapter takes a list of dicts, so a
trace is made for a fixed number of images. A batch of B images runs as B calls of the graph
(:func:`run_onnx`), or as one call of the dynamic-batch model of :mod:`roi_plugin.export.onnx_batch`
(this graph inside an ONNX ``Loop`` over the images).

Comparison (:func:`compare`): detections are paired one to one (same class, score within the
tolerance, nearest box: scores that tie to float precision may leave top-k/NMS in either order);
boxes and scores by max absolute difference, masks by the IoU of the masks pasted into the image
at threshold 0.5 (Detectron2's own) and by the max difference of the mask probabilities.

The example traced (:func:`example_image`): ``torch.onnx.export`` (TorchScript-based) gives an
``index_put`` traced with a one-element tensor index (``t[idx, 0] = v`` with ``idx`` of length
1) a scalar value shape, so the graph fails in onnxruntime on any other length ("Input shape:{11},
requested shape:{}"); lengths 0 and 2+ export correctly. Detectron2's ``RotatedBoxes.clip``
(RRPN's proposals, the rotated heads' detections) assigns through the indices of its
near-upright boxes, whose number depends on the image: the random example is drawn again until
no ``index_put`` of the eager run has a one-element index.
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from detectron2.export import TracingAdapter
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from . import require_onnx
from .rotated_nms import DOMAIN, inline_rotated_functions, rotated_symbolics

__all__ = ["trace_adapter", "example_image", "one_element_index_puts", "export_model_onnx", "run_eager", "run_onnx", "compare", "OUTPUT_FIELDS"]

OUTPUT_FIELDS = ("pred_boxes", "scores", "pred_classes", "pred_masks")


def _inference(model, inputs):
    # do_postprocess=False: ROI masks (N, 1, M, M) instead of image-sized masks, as Detectron2's
    # export tool does; detector_postprocess pastes them outside the graph.
    return model.inference(inputs, do_postprocess=False)


def one_element_index_puts(fn, *args) -> int:
    """How many ``index_put`` calls of ``fn(*args)`` index with a one-element tensor (recorded
    by a ``TorchDispatchMode``, under ``torch.no_grad``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    puts = (torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
            torch.ops.aten._index_put_impl_.default)

    class Recorder(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in puts and any(i is not None and i.dim() > 0 and i.numel() == 1 for i in args[1]):
                Recorder.count += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Recorder():
        fn(*args)
    return Recorder.count


def example_image(model: nn.Module, height: int, width: int, seed: int = 123, tries: int = 20) -> torch.Tensor:
    """A random (3, H, W) image, pixels 0..255, that the exporter traces correctly: the first
    draw (``seed``, ``seed + 1``, ...) whose eager inference has no ``index_put`` with a
    one-element index (module docstring)."""
    for k in range(tries):
        image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed + k)) * 255
        if one_element_index_puts(_inference, model.eval(), [{"image": image}]) == 0:
            return image
    raise RuntimeError(f"no {height}x{width} example in {tries} draws avoids an index_put with a one-element "
                       f"index (torch.onnx.export would give it a scalar shape); try another --height/--width")


def trace_adapter(model: nn.Module, image: torch.Tensor) -> TracingAdapter:
    """Detectron2's ``TracingAdapter`` for ``model.inference`` on one (3, H, W) image."""
    return TracingAdapter(model.eval(), [{"image": image}], _inference)


def _output_names(model: nn.Module, image: torch.Tensor) -> List[str]:
    """The adapter's flattened outputs: the ``Instances`` fields in sorted order, then its image size."""
    with torch.no_grad():
        return sorted(_inference(model, [{"image": image}])[0].get_fields().keys()) + ["image_size"]


def export_model_onnx(model: nn.Module, image: torch.Tensor, path: str, opset_version: int = 17) -> List[str]:
    """Trace ``model`` on ``image`` (3, H, W) and write an ONNX graph with dynamic H, W and
    detection count. Returns the output names (the ``Instances`` fields, in order)."""
    onnx = require_onnx()  # torch.onnx.export needs it; the error names the extra
    adapter = trace_adapter(model, image)
    names = _output_names(model, image)
    dynamic = {"image": {1: "height", 2: "width"}}
    for name in names[:-1]:
        dynamic[name] = {0: "detections"}
    # Rotated models: Detectron2's rotated NMS / IoU operators become ONNX operators
    # (roi_plugin/export/rotated_nms.py); an upright model has no such node, nothing changes.
    with torch.no_grad(), rotated_symbolics(opset_version):
        torch.onnx.export(
            adapter,
            (image,),
            path,
            input_names=["image"],
            output_names=names,
            dynamic_axes=dynamic,
            opset_version=opset_version,
            dynamo=False,
            custom_opsets={DOMAIN: 1},
        )
    graph = onnx.load(path)
    inlined = inline_rotated_functions(graph, opset_version)
    if inlined is not graph:
        onnx.save(inlined, path)
    return names


def _fields(inst: Instances) -> Dict[str, np.ndarray]:
    out = {}
    for k, v in inst.get_fields().items():
        v = v.tensor if isinstance(v, Boxes) else v
        out[k] = v.detach().cpu().numpy()
    return out


def run_eager(model: nn.Module, images: Sequence[torch.Tensor], batched: bool = False) -> List[Dict[str, np.ndarray]]:
    """The eager model on (3, H, W) images, one ``inference`` call per image (what the graph
    computes), or one call for all of them (``batched``: Detectron2 pads the images to a common
    size divisible by the backbone's, which changes border features, so detections differ)."""
    with torch.no_grad():
        if batched:
            insts = model.eval().inference([{"image": im} for im in images], do_postprocess=False)
        else:
            insts = [model.eval().inference([{"image": im}], do_postprocess=False)[0] for im in images]
    return [_fields(i) for i in insts]


def run_onnx(session, names: Sequence[str], images: Sequence[torch.Tensor]) -> List[Dict[str, np.ndarray]]:
    """The ONNX graph (an onnxruntime ``InferenceSession``) on each image in turn: the graph takes one."""
    return [dict(zip(names, session.run(None, {"image": im.numpy()}))) for im in images]


def _pasted(fields: Dict[str, np.ndarray], height: int, width: int) -> np.ndarray:
    inst = Instances((height, width))
    inst.pred_boxes = Boxes(torch.from_numpy(fields["pred_boxes"]))
    inst.pred_masks = torch.from_numpy(fields["pred_masks"])
    return detector_postprocess(inst, height, width).pred_masks.numpy()


def _match(ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray], score_tol: float) -> np.ndarray:
    """For each reference detection, the index of its counterpart in ``got``: the same class,
    a score within ``score_tol``, the nearest box, each used once (greedy in score order).
    Detections whose scores tie to float precision may come out of NMS/top-k in either order;
    matching, not position, pairs them. -1 where none is left."""
    used = np.zeros(len(got["scores"]), dtype=bool)
    out = np.full(len(ref["scores"]), -1, dtype=np.int64)
    for i in range(len(ref["scores"])):
        ok = (~used) & (got["pred_classes"] == ref["pred_classes"][i])
        ok &= np.abs(got["scores"] - ref["scores"][i]) <= score_tol
        if ok.any():
            cost = np.where(ok, np.abs(got["pred_boxes"] - ref["pred_boxes"][i]).max(1), np.inf)
            out[i] = int(cost.argmin())
            used[out[i]] = True
    return out


def compare(ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray], image_hw, score_tol: float = 1e-3) -> Dict[str, float]:
    """Max |difference| of boxes and scores, unmatched detections, min mask IoU (pasted at 0.5).
    Rotated boxes (N, 5): ``box_diff`` over ``x_ctr, y_ctr, w, h`` in pixels, ``angle_diff`` in
    degrees (modulo 360).

    Detections are paired by :func:`_match` (same class, score within ``score_tol``, nearest
    box); ``unmatched`` counts reference detections without a counterpart plus the count
    difference, and the differences are over the pairs.
    """
    n_ref, n_got = len(ref["scores"]), len(got["scores"])
    idx = _match(ref, got, score_tol)
    pair = idx >= 0
    n = int(pair.sum())
    g = {k: v[idx[pair]] for k, v in got.items() if k != "image_size"}
    r = {k: v[pair] for k, v in ref.items() if k != "image_size"}
    res = {"detections": float(n_ref), "count_mismatch": float(n_ref != n_got),
           "unmatched": float((~pair).sum() + abs(n_ref - n_got)),
           "in_order": float(bool(np.array_equal(idx, np.arange(n_ref))))}
    res["class_mismatch"] = res["unmatched"]  # a pair has the same class by construction
    if ref["pred_boxes"].shape[1] == 5:  # rotated (x_ctr, y_ctr, w, h, angle): pixels, then degrees
        res["box_diff"] = float(np.abs(r["pred_boxes"][:, :4] - g["pred_boxes"][:, :4]).max()) if n else 0.0
        turn = (r["pred_boxes"][:, 4] - g["pred_boxes"][:, 4] + 180.0) % 360.0 - 180.0  # same angle mod 360
        res["angle_diff"] = float(np.abs(turn).max()) if n else 0.0
    else:
        res["box_diff"] = float(np.abs(r["pred_boxes"] - g["pred_boxes"]).max()) if n else 0.0
    res["score_diff"] = float(np.abs(r["scores"] - g["scores"]).max()) if n else 0.0
    if "pred_masks" in ref and n:
        res["mask_prob_diff"] = float(np.abs(r["pred_masks"] - g["pred_masks"]).max())
        a, b = _pasted(r, *image_hw), _pasted(g, *image_hw)
        inter = (a & b).reshape(n, -1).sum(1)
        union = (a | b).reshape(n, -1).sum(1)
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        res["mask_iou_min"] = float(iou.min())
    elif "pred_masks" in ref:
        res["mask_prob_diff"], res["mask_iou_min"] = 0.0, 1.0
    return res
