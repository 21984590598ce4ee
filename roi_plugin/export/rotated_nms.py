# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Rotated NMS and rotated IoU in ONNX operators, for the ONNX graph of a rotated detector.

ONNX has no rotated NMS (``NonMaxSuppression`` takes upright boxes) and no rotated IoU.
Detectron2's rotated inference reaches both through custom operators: RRPN
(``find_top_rrpn_proposals``) and the rotated ROI heads (``fast_rcnn_inference_single_image_rotated``)
call ``batched_nms_rotated``, a ``@torch.jit.script_if_tracing`` function, so a trace keeps its
``if boxes.numel() == 0`` branch and, inside it, one node ``detectron2::nms_rotated``;
``pairwise_iou_rotated`` is one node ``detectron2::box_iou_rotated``. Those nodes are the
plugin's pure-PyTorch operators (:mod:`roi_plugin.layers.rotated_ops`) or, with a compiled
Detectron2, its ``_C`` kernels; ``torch.onnx.export`` has no conversion for either.

This module gives them one, without touching Detectron2's code:

1. :func:`rotated_functions`: the exportable forms of :mod:`roi_plugin.layers.rotated_ops`
   (:func:`~roi_plugin.layers.rotated_ops.nms_rotated_static`,
   :func:`~roi_plugin.layers.rotated_ops.box_iou_rotated_static`: the operators' rules, in tensor
   operations only) exported once by ``torch.onnx.export`` into the ONNX functions
   ``roi_plugin.NMSRotated(boxes, scores, iou_threshold) -> keep`` and
   ``roi_plugin.BoxIoURotated(boxes1, boxes2) -> iou``;
2. :func:`rotated_symbolics`: while a model is exported, symbolics for the two operators
   (``torch.onnx.register_custom_op_symbolic``, PyTorch's hook for custom operators) emit calls
   to those functions (the threshold, a constant of the trace, becomes a float32 constant);
3. :func:`inline_rotated_functions`: the functions are added to the exported model and inlined
   (``onnx.inliner``), so that the graph holds standard ONNX operators only.

The NMS graph: ``TopK`` orders the boxes by score; the candidate pairs (an IoU bound from the
axis-aligned hulls, as the eager operator) go through ``NonZero``; their IoU is the exact
intersection (Sutherland-Hodgman clipping in float64, ``ScatterElements``/``GatherElements``)
rounded to float32, scattered into an (n, n) matrix; the greedy pass is an ONNX ``Loop`` of n
steps over its rows. Limits: the boxes are float32 (``batched_nms_rotated`` casts them); memory
grows as n^2 for n boxes (the dense candidate mask and IoU matrix: RRPN's NMS sees up to
``PRE_NMS_TOPK_TEST`` boxes per level, about 2300 on a 256 px image, 5.3 M pairs); the loop runs
n steps (no cap on the box count); boxes of *equal* scores are ordered by index (``TopK``), where
PyTorch's CPU sort promises no order, so on exact score ties the kept set may differ from eager.
"""
import contextlib
import io
from typing import Dict, List

import torch
from torch import nn

from ..layers.rotated_ops import box_iou_rotated_static, nms_rotated_static
from . import graph_nodes, require_onnx

__all__ = ["DOMAIN", "rotated_functions", "rotated_symbolics", "inline_rotated_functions", "export_nms_rotated"]

DOMAIN = "roi_plugin"  # the ONNX domain of the functions (gone from the graph once inlined)
_OPS = ("detectron2::nms_rotated", "detectron2::box_iou_rotated")


class _NMSRotated(nn.Module):
    def forward(self, boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: torch.Tensor) -> torch.Tensor:
        return nms_rotated_static(boxes, scores, iou_threshold)


class _BoxIoURotated(nn.Module):
    def forward(self, boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
        return box_iou_rotated_static(boxes1, boxes2)


def _example_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.rand(n, 2, generator=g) * 40, torch.rand(n, 2, generator=g) * 20 + 1,
                      torch.rand(n, 1, generator=g) * 360 - 180], 1)


def _export(module: nn.Module, args, inputs: List[str], outputs: List[str], dynamic, opset: int):
    """``module`` traced and exported to an in-memory ONNX model."""
    onnx = require_onnx()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, args, buf, input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                          opset_version=opset, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _nms_model(opset_version: int):
    return _export(_NMSRotated(), (_example_boxes(8, 0), torch.rand(8), torch.tensor(0.5)),
                   ["boxes", "scores", "iou_threshold"], ["keep"],
                   {"boxes": {0: "n"}, "scores": {0: "n"}, "keep": {0: "kept"}}, opset_version)


def export_nms_rotated(path, opset_version: int = 17):
    """Write the rotated NMS alone as an ONNX model: inputs ``boxes`` (n, 5) float32, ``scores``
    (n,) float32, ``iou_threshold`` () float32; output ``keep`` (k,) int64, the kept indices by
    decreasing score (``detectron2::nms_rotated``'s result). Returns the model."""
    onnx = require_onnx()
    model = _nms_model(opset_version)
    onnx.save(model, path)
    return model


def _as_function(model, name: str):
    """An exported model as an ONNX function of :data:`DOMAIN`: its inputs and outputs, its
    initializers as ``Constant`` nodes, then its nodes."""
    onnx = require_onnx()
    from onnx import helper

    g = model.graph
    consts = [helper.make_node("Constant", [], [t.name], value=t) for t in g.initializer]
    return helper.make_function(DOMAIN, name, [i.name for i in g.input], [o.name for o in g.output],
                                consts + list(g.node), list(model.opset_import))


def rotated_functions(opset_version: int = 17) -> Dict[str, "object"]:
    """``{name: FunctionProto}``: ``NMSRotated`` and ``BoxIoURotated`` in opset ``opset_version``."""
    nms = _nms_model(opset_version)
    iou = _export(_BoxIoURotated(), (_example_boxes(6, 1), _example_boxes(5, 2)), ["boxes1", "boxes2"], ["iou"],
                  {"boxes1": {0: "n"}, "boxes2": {0: "m"}, "iou": {0: "n", 1: "m"}}, opset_version)
    return {"NMSRotated": _as_function(nms, "NMSRotated"), "BoxIoURotated": _as_function(iou, "BoxIoURotated")}


def _nms_symbolic(g, boxes, scores, iou_threshold):
    from torch.onnx import symbolic_helper

    threshold = symbolic_helper._maybe_get_const(iou_threshold, "f")
    threshold = g.op("Constant", value_t=torch.tensor(float(threshold), dtype=torch.float32))
    keep = g.op(f"{DOMAIN}::NMSRotated", boxes, scores, threshold)
    keep.setType(boxes.type().with_dtype(torch.int64).with_sizes([None]))
    return keep


def _iou_symbolic(g, boxes1, boxes2):
    iou = g.op(f"{DOMAIN}::BoxIoURotated", boxes1, boxes2)
    iou.setType(boxes1.type().with_dtype(torch.float32).with_sizes([None, None]))
    return iou


@contextlib.contextmanager
def rotated_symbolics(opset_version: int = 17):
    """Within the block, ``torch.onnx.export`` writes ``detectron2::nms_rotated`` /
    ``detectron2::box_iou_rotated`` as calls to ``roi_plugin.NMSRotated`` / ``BoxIoURotated``
    (pass ``custom_opsets={DOMAIN: 1}`` to the export, then :func:`inline_rotated_functions`)."""
    from torch.onnx import register_custom_op_symbolic, unregister_custom_op_symbolic

    register_custom_op_symbolic(_OPS[0], _nms_symbolic, opset_version)
    register_custom_op_symbolic(_OPS[1], _iou_symbolic, opset_version)
    try:
        yield
    finally:
        for name in _OPS:
            unregister_custom_op_symbolic(name, opset_version)


def _used_functions(graph) -> set:
    """Names of the :data:`DOMAIN` nodes in ``graph`` and its subgraphs."""
    return {node.op_type for node in graph_nodes(graph) if node.domain == DOMAIN}


def inline_rotated_functions(model, opset_version: int = 17):
    """``model`` with its ``roi_plugin.NMSRotated`` / ``BoxIoURotated`` calls replaced by the
    functions' operators (a model without such calls is returned unchanged)."""
    onnx = require_onnx()
    from onnx import inliner

    used = _used_functions(model.graph)
    if not used:
        return model
    functions = rotated_functions(opset_version)
    model.functions.extend(functions[name] for name in sorted(used))
    model = inliner.inline_local_functions(model)
    kept = [op for op in model.opset_import if op.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model
