# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Deployment, as Detectron2's own ``export`` package:

* :mod:`.branches`    tensor-in wrappers of the pooler and of the ROI heads' box / mask branches
  (ONNX, ``torch.export``), and ``ROIHeadsTensors`` (the whole ``roi_heads`` on tensors);
* :mod:`.onnx_model`  the whole model traced with Detectron2's ``TracingAdapter`` to a
  single-image ONNX graph, run with onnxruntime and compared with eager;
* :mod:`.onnx_batch`  the dynamic-batch graph: the single-image graph inside an ONNX ``Loop``;
* :mod:`.torchscript_model`  the same whole model traced to TorchScript;
* :mod:`.rotated_nms`  Detectron2's rotated NMS / IoU operators as ONNX operators (rotated models).

The submodules are imported on use (the ONNX ones need the ``[deploy]`` extra).
"""

__all__ = ["require_onnx", "graph_nodes"]


def require_onnx():
    """The ``onnx`` module, or an ``ImportError`` that names the extra installing it.

    ``onnx`` (and ``onnxruntime``, which the callers pass in as sessions) are not needed to
    train or run the plugin, only to export: they come with ``pip install roi_plugin[deploy]``.
    ``torch.onnx.export`` needs ``onnx`` too, so the exporters call this first.
    """
    try:
        import onnx
    except ImportError as e:
        raise ImportError(
            "ONNX export needs the 'onnx' package (and onnxruntime to run the graphs): "
            "pip install 'roi_plugin[deploy]'"
        ) from e
    return onnx


def graph_nodes(graph):
    """Every node of an ONNX ``graph`` and of its subgraphs (``If`` branches, ``Loop`` bodies),
    depth first."""
    onnx = require_onnx()
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from graph_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from graph_nodes(sub)
