# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The device path: the ``gather`` operators on CUDA, as Triton kernels with no host reads.

Why. On the CPU the operators build a plan of bilinear taps (:mod:`.gather_plan`) and sum it
with ``embedding_bag``. Built op by op on a GPU, that plan reads its box-dependent sizes on
the host and launches every step: one NVIDIA H200 training step made 94 host
synchronisations and 1301 kernel launches, 4x ``ROIPooler``'s time (results/gpu.md). Here the
operators of :mod:`.roi_align_ops` instead run, for every pooler type (ROIAlign, ROIAlignV2:
:mod:`.roi_align_kernels`; ROIAlignRotated: :mod:`.rotated_kernels`):

    forward:  the box check (its one host read), level routing (:mod:`.levels`), one
              allocation and one kernel launch
    backward: level routing, a stable sort of the ROIs by (level, image), one allocation per
              level and one kernel launch

Nothing on the way depends on a box-dependent size, so nothing waits for the GPU; memory is
the output (forward) or the feature gradients (backward) and a few numbers per ROI, whatever
the boxes. The backward is a gather over ROIs per pixel tile: bitwise reproducible, with or
without ``torch.use_deterministic_algorithms(True)``.

When. :func:`enabled`: the ``gather`` sampler, at most :data:`MAX_LEVELS`
levels, Triton importable, and the maps on CUDA, or on any device in ``interpret`` mode. The
environment variable ``ROI_PLUGIN_DEVICE_PATH``, read at every call, picks the mode:

    auto       (default) CUDA tensors take the kernels
    interpret  CPU tensors too, through Triton's interpreter (slow; what CI tests the kernels
               with; needs ``TRITON_INTERPRET=1`` set before triton is imported)
    off        never: the plan path on every device

The ``grid_sample`` sampler keeps its path on every device (docs/gpu.md gives its operator
counts).
"""
import math
import os
from typing import List, Sequence

import torch

try:
    import triton
    from . import roi_align_kernels as _upright_kernels, rotated_kernels as _rotated_kernels
except ImportError:  # no Triton (e.g. a CPU-only build of torch on some platforms)
    triton = None
    _upright_kernels = _rotated_kernels = None

__all__ = ["MAX_LEVELS", "enabled", "mode", "forward", "backward"]

MAX_LEVELS = 5  # per-level arguments of the kernels
MODES = ("auto", "interpret", "off")
_ALIGNED = {"ROIAlign": False, "ROIAlignV2": True, "ROIAlignRotated": True}  # the pooler types it runs
# Block sizes (channels per program, the backward's pixel tile) and warps, chosen without a GPU
# for no register spills on sm_90 (ptxas -v, tools/gpu_check.py's dry run prints them):
# forward by the padded number of bins (7x7 -> 64, 14x14 -> 256).
_FWD_BLOCKS = {64: dict(CB=16, num_warps=4), 256: dict(CB=8, num_warps=8)}
_BWD_BLOCKS = dict(CB=16, TY=16, TX=16, num_warps=8)


def mode() -> str:
    """The device-path mode of ``ROI_PLUGIN_DEVICE_PATH`` (see the module docstring)."""
    value = os.environ.get("ROI_PLUGIN_DEVICE_PATH", "auto")
    if value not in MODES:
        raise ValueError(f"ROI_PLUGIN_DEVICE_PATH={value!r}; use one of {MODES}")
    return value


def enabled(sampler: str, pooler_type: str, features: Sequence[torch.Tensor]) -> bool:
    """Whether the operators run the kernels for this call (see the module docstring)."""
    if _upright_kernels is None or sampler != "gather" or pooler_type not in _ALIGNED:
        return False
    if len(features) > MAX_LEVELS:
        return False
    m = mode()
    return m == "interpret" or (m == "auto" and features[0].is_cuda)


def interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` when triton was
    first imported): the only way they run on CPU tensors."""
    return (_upright_kernels is not None
            and type(_upright_kernels.roi_align_forward_kernel).__name__ == "InterpretedFunction")


def _launch(name: str, device: torch.device, grid, *args, **meta):
    """Launch kernel ``name`` on ``grid``, in a profiler range of its own: tools/op_counts.py
    counts the range as one call (a GPU launch) and leaves out what the interpreter does inside.
    On a device other than CUDA the kernels run in Triton's interpreter, which must be switched on
    before ``triton`` is first imported (tests/conftest.py does so without a GPU)."""
    if device.type != "cuda" and not interpreted():
        raise RuntimeError(
            "ROI_PLUGIN_DEVICE_PATH=interpret runs the Triton kernels on CPU tensors through Triton's "
            "interpreter, which must be on before triton is imported: start the process with TRITON_INTERPRET=1"
        )
    module = _rotated_kernels if name.startswith("roi_align_rotated") else _upright_kernels
    kernel = getattr(module, name)
    with torch.profiler.record_function(f"triton::{name}"):
        kernel[grid](*args, **meta, enable_fp_fusion=False)


def _per_level(values: Sequence, fill, slots: int = MAX_LEVELS) -> List:
    """``values`` padded with ``fill`` to the kernels' ``slots`` per-level arguments."""
    return list(values) + [fill] * (slots - len(values))


def _sizes(shapes: Sequence[Sequence[int]]) -> List[int]:
    """``H0, W0, H1, W1, ...`` of the maps of ``shapes`` (B, C, H, W), padded."""
    return [v for s in _per_level([tuple(s) for s in shapes], (1, 1, 1, 1)) for v in s[2:]]


def _contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(n)))


def kernel_name(pooler_type: str, direction: str) -> str:
    """The kernel of ``pooler_type`` (a key of :data:`_ALIGNED`) for ``direction`` ("forward" or "backward")."""
    return f"roi_align_{'rotated_' if pooler_type == 'ROIAlignRotated' else ''}{direction}_kernel"


def forward_meta(output_size: Sequence[int], sampling_ratio: int, pooler_type: str, dtype: torch.dtype,
                 levels: int) -> dict:
    """The forward kernel's compile-time arguments and launch options (block sizes, warps)."""
    ph, pw = output_size
    pb = _pow2(ph * pw)
    blocks = next((b for n, b in sorted(_FWD_BLOCKS.items()) if pb <= n), dict(CB=4, num_warps=8))
    meta = dict(PH=ph, PW=pw, PB=pb, RATIO=sampling_ratio, F64=dtype == torch.float64, NUM_LEVELS=levels, **blocks)
    if pooler_type != "ROIAlignRotated":
        meta["ALIGNED"] = _ALIGNED[pooler_type]
    return meta


def backward_meta(output_size: Sequence[int], sampling_ratio: int, pooler_type: str, dtype: torch.dtype,
                  levels: int) -> dict:
    """The backward kernel's compile-time arguments and launch options (block sizes, warps)."""
    ph, pw = output_size
    meta = dict(PH=ph, PW=pw, RATIO=sampling_ratio, F64=dtype == torch.float64, NUM_LEVELS=levels, **_BWD_BLOCKS)
    if pooler_type != "ROIAlignRotated":
        meta.update(PWP=_pow2(pw), ALIGNED=_ALIGNED[pooler_type])
    return meta


def forward(features: List[torch.Tensor], rois: torch.Tensor, level_of: torch.Tensor, output_size: Sequence[int],
            scales: Sequence[float], sampling_ratio: int, pooler_type: str) -> torch.Tensor:
    """(K, C, Ph, Pw) pooled from ``features`` (L x (B, C, H_l, W_l)) for ``rois`` (K, 5), or (K, 6)
    rotated, routed to ``level_of`` (K,); the values of the plan path (sample for sample, summed
    in another order)."""
    ph, pw = output_size
    features = [_contiguous(f) for f in features]
    num, channels = rois.shape[0], features[0].shape[1]
    out = features[0].new_empty((num, channels, ph, pw))
    meta = forward_meta(output_size, sampling_ratio, pooler_type, features[0].dtype, len(features))
    _launch(kernel_name(pooler_type, "forward"), out.device, (num, triton.cdiv(channels, meta["CB"])),
            out, _contiguous(rois), level_of, *_per_level(features, features[0]),
            *_sizes([f.shape for f in features]), *_per_level(scales, 1.0), channels, **meta)
    return out


def backward(grad: torch.Tensor, rois: torch.Tensor, level_of: torch.Tensor, sizes: Sequence[Sequence[int]],
             dtype: torch.dtype, output_size: Sequence[int], scales: Sequence[float], sampling_ratio: int,
             pooler_type: str) -> List[torch.Tensor]:
    """The gradients (B, C, H_l, W_l) of ``sizes``, in ``dtype``, of :func:`forward` for the
    output gradient ``grad`` (K, C, Ph, Pw)."""
    batch, channels = sizes[0][0], sizes[0][1]
    grads = [torch.empty(tuple(s), dtype=dtype, device=grad.device) for s in sizes]
    # ROIs by (level, image), stably (ROI order within each): the order each tile sums them in.
    key, order = torch.sort(level_of * batch + rois[:, 0].to(torch.int64), stable=True)
    seg = torch.searchsorted(key, torch.arange(len(sizes) * batch + 1, device=key.device))
    meta = backward_meta(output_size, sampling_ratio, pooler_type, dtype, len(sizes))
    # Programs: a level's run of (image, tile) pairs starts where the previous level's ends.
    starts, total = [], 0
    for _, _, h, w in sizes:
        starts.append(total)
        total += batch * triton.cdiv(h, meta["TY"]) * triton.cdiv(w, meta["TX"])
    _launch(kernel_name(pooler_type, "backward"), grad.device, (total, triton.cdiv(channels, meta["CB"])),
            _contiguous(grad), _contiguous(rois), level_of, order, seg, *_per_level(grads, grads[0]),
            *_sizes(sizes), *_per_level(scales, 1.0), *_per_level(starts[1:], total, MAX_LEVELS - 1),
            channels, batch, **meta)
    return grads
