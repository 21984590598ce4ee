# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""A dynamic-batch ONNX graph of a whole Detectron2 R-CNN: the single-image graph of
:func:`roi_plugin.export.onnx_model.export_model_onnx` as the body of an ONNX ``Loop`` over the images.

Why a ``Loop`` and not a trace at batch B: Detectron2's RPN and ROI post-processing (top-k per
level, NMS, score threshold, ``detections_per_image``) loop over the images in Python and keep
a list of ``Instances`` of different lengths, so ``torch.jit.trace`` unrolls that loop for the
example's image count, and the ONNX graph of a trace has the batch size built in. Batched
post-processing would mean rewriting Detectron2's inference code. Instead, the per-image graph
(dynamic H, W and detection count, exact against eager) is wrapped, with standard ONNX operators
only, into::

    inputs:  images (B, 3, H, W) float (the batch padded to a common size, pixels 0..255)
             image_sizes (B, 2) int64 (each image's true height, width)
    Loop i = 0 .. B-1:
        image_i = Slice(Gather(images, i), [0, 0], image_sizes[i])     # (3, h_i, w_i)
        outputs_i = per-image graph(image_i)                           # n_i detections
        each output Padded along its first axis from n_i to K rows     # K = detections_per_image
    outputs: pred_boxes (B, K, 4) (or (B, K, 5) rotated), scores (B, K), pred_classes (B, K) (-1 on padding rows),
             pred_masks (B, K, 1, M, M) (Mask R-CNN), pred_keypoints (B, K, P, 3) and
             pred_keypoint_heatmaps (B, K, P, S, S) (keypoint R-CNN), num_detections (B,) int64

B, H and W are dynamic axes; rows ``num_detections[i]`` onwards of image i are padding (zeros,
class -1). Each image runs through exactly the single-image graph on its own (h_i, w_i) crop,
so image i's rows equal the single-image graph's (and eager's) detections of that image alone:
the padding of the batch never reaches the model (unlike Detectron2's eager batched call, which
pads images to a common size and so changes border features). The body's values are renamed
with a prefix and its initializers moved to the outer graph (a ``Loop`` body may read outer
values), so nothing is copied per iteration. The detector never returns more than K detections
(Detectron2's ``test_topk_per_image``), so the padding is never negative.
"""
from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

import numpy as np
import torch

from . import require_onnx

if TYPE_CHECKING:  # onnx is the [deploy] extra: imported inside the functions that build graphs
    import onnx

__all__ = ["batch_onnx_model", "export_batched_onnx", "pad_batch", "run_onnx_batched"]

PREFIX = "per_image/"


def _rename_graph(graph: "onnx.GraphProto", rename) -> None:
    """Rename every value of ``graph`` (and of its nested subgraphs) in place."""
    onnx = require_onnx()
    for node in graph.node:
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        if node.name:
            node.name = PREFIX + node.name
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename_graph(attr.g, rename)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _rename_graph(g, rename)
    for coll in (graph.input, graph.output, graph.value_info):
        for v in coll:
            v.name = rename(v.name)
    for init in graph.initializer:
        init.name = rename(init.name)


def batch_onnx_model(single: "onnx.ModelProto", max_detections: int, image_input: str = "image",
                     drop_outputs: Sequence[str] = ("image_size",), box_dim: int = 4) -> "onnx.ModelProto":
    """The dynamic-batch model around ``single`` (the graph of
    :func:`roi_plugin.export.onnx_model.export_model_onnx`: input ``image`` (3, H, W), outputs with the
    detections on their first axis, plus ``image_size``): see the module docstring.
    ``max_detections`` is K, the detector's ``test_topk_per_image``; ``box_dim`` the columns of
    ``pred_boxes`` (4, or 5 for rotated boxes)."""
    onnx = require_onnx()
    from onnx import TensorProto, helper, numpy_helper

    single = onnx.ModelProto.FromString(single.SerializeToString())  # work on a copy
    g = single.graph
    if [i.name for i in g.input] != [image_input]:
        raise ValueError(f"expected one graph input {image_input!r}, got {[i.name for i in g.input]}")
    # (name, rank, dtype, dims after the first) of the kept outputs, before renaming; the box
    # columns are fixed, but the trace leaves them symbolic
    known = {"pred_boxes": [box_dim]}
    outs = [(o.name, len(o.type.tensor_type.shape.dim), o.type.tensor_type.elem_type,
             known.get(o.name, [d.dim_value or None for d in o.type.tensor_type.shape.dim[1:]]))
            for o in g.output if o.name not in drop_outputs]
    if not outs:
        raise ValueError("the graph has no detection outputs")

    def rename(name):
        return name if name == "" else PREFIX + name

    _rename_graph(g, rename)
    initializers = list(g.initializer)
    del g.initializer[:]
    K = int(max_detections)
    const = lambda name, arr: numpy_helper.from_array(np.asarray(arr), name)  # noqa: E731

    # --- Loop body: (iteration, cond) -> (cond, scan outputs...)
    nodes = [
        helper.make_node("Gather", ["images", "i"], ["image_full"], axis=0),           # (3, H, W)
        helper.make_node("Gather", ["image_sizes", "i"], ["size_i"], axis=0),          # (2,)
        helper.make_node("Slice", ["image_full", "zeros2", "size_i", "axes12"], [rename(image_input)]),
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
    ]
    nodes += list(g.node)
    n_name = "n_det"
    first = outs[0][0]  # every kept output has the detections on axis 0
    nodes += [
        helper.make_node("Shape", [rename(first)], ["shape_first"]),
        helper.make_node("Slice", ["shape_first", "zero1", "one1"], [n_name]),          # (1,) = n
        helper.make_node("Sub", ["K1", n_name], ["pad_rows"]),                          # (1,) = K - n
        helper.make_node("Squeeze", [n_name, "axes0"], ["num_detections_i"]),
    ]
    body_outputs = [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])]
    outer_outputs = []
    for name, r, dtype, dims in outs:
        pads, padded, fill = f"pads/{name}", f"padded/{name}", f"fill/{name}"
        nodes.append(helper.make_node("Concat", [f"zeros{r}", "pad_rows", f"zeros{r - 1}"], [pads], axis=0))
        fill_value = -1 if dtype == TensorProto.INT64 else 0
        np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
        nodes.append(helper.make_node("Constant", [], [fill], value=const(fill, np.array(fill_value, np_dtype))))
        nodes.append(helper.make_node("Pad", [rename(name), pads, fill], [padded], mode="constant"))
        body_outputs.append(helper.make_tensor_value_info(padded, dtype, [K] + dims))
        outer_outputs.append(helper.make_tensor_value_info(name, dtype, ["batch", K] + dims))
    body_outputs.append(helper.make_tensor_value_info("num_detections_i", TensorProto.INT64, []))
    outer_outputs.append(helper.make_tensor_value_info("num_detections", TensorProto.INT64, ["batch"]))
    body = helper.make_graph(
        nodes, "per_image_body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        body_outputs,
        value_info=list(g.value_info),
    )

    ranks = sorted({o[1] for o in outs} | {o[1] - 1 for o in outs} | {2})  # zeros2: Slice starts
    outer_consts = [const("axes0", np.array([0], np.int64)), const("axes12", np.array([1, 2], np.int64)),
                    const("zero1", np.zeros(1, np.int64)),
                    const("one1", np.ones(1, np.int64)), const("K1", np.array([K], np.int64)),
                    const("true", np.array(True))]
    outer_consts += [const(f"zeros{r}", np.zeros(r, np.int64)) for r in ranks]
    outer_nodes = [
        helper.make_node("Shape", ["images"], ["images_shape"]),
        helper.make_node("Gather", ["images_shape", "zero_scalar"], ["batch_size"], axis=0),
        helper.make_node("Loop", ["batch_size", "true"], [o.name for o in outer_outputs], body=body),
    ]
    outer_consts.append(const("zero_scalar", np.array(0, np.int64)))
    graph = helper.make_graph(
        outer_nodes, "batched_" + (g.name or "model"),
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"]),
         helper.make_tensor_value_info("image_sizes", TensorProto.INT64, ["batch", 2])],
        outer_outputs,
        initializer=initializers + outer_consts,
    )
    model = helper.make_model(graph, opset_imports=list(single.opset_import), producer_name="roi_plugin.export.onnx_batch")
    model.ir_version = single.ir_version
    return model


def export_batched_onnx(single_path: str, path: str, max_detections: int,
                        full_check: bool = True, box_dim: int = 4) -> "onnx.ModelProto":
    """Read the single-image graph at ``single_path``, write its dynamic-batch ``Loop`` model
    (:func:`batch_onnx_model`) to ``path`` after ``onnx.checker.check_model`` (``full_check``:
    with ONNX shape inference through the ``Loop`` body too). Returns the model."""
    onnx = require_onnx()
    model = batch_onnx_model(onnx.load(single_path), max_detections, box_dim=box_dim)
    onnx.checker.check_model(model, full_check=full_check)
    onnx.save(model, path)
    return model


def pad_batch(images: Sequence[torch.Tensor]) -> Tuple[np.ndarray, np.ndarray]:
    """(3, h_i, w_i) images -> the graph's inputs: ``images`` (B, 3, max h, max w) float32, zero
    padded at the bottom and right, and ``image_sizes`` (B, 2) int64."""
    if not images:
        raise ValueError("pad_batch: no images")
    h = max(int(im.shape[1]) for im in images)
    w = max(int(im.shape[2]) for im in images)
    out = np.zeros((len(images), 3, h, w), np.float32)
    for k, im in enumerate(images):
        out[k, :, : im.shape[1], : im.shape[2]] = im.numpy()
    sizes = np.array([[im.shape[1], im.shape[2]] for im in images], np.int64)
    return out, sizes


def run_onnx_batched(session, images: Sequence[torch.Tensor]) -> List[Dict[str, np.ndarray]]:
    """The batched graph (an onnxruntime ``InferenceSession``) on ``images`` in one call, split
    back into one dict per image with its ``num_detections`` rows (the fields of ``run_onnx``)."""
    batch, sizes = pad_batch(images)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"images": batch, "image_sizes": sizes})))
    counts = got.pop("num_detections")
    return [{k: v[b, : int(counts[b])] for k, v in got.items()} for b in range(len(images))]
