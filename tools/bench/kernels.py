# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The device path's kernels compiled for a GPU without one: Triton's compiler down to a cubin
with the ptxas it ships, for a given compute capability (9.0: H100, H200).

``compile_for`` builds a kernel with the block sizes and compile-time arguments the launcher
(:mod:`roi_plugin.layers.device_path`) would use; ``resources`` reads registers, spills and
shared memory from ``ptxas -v``. Used by tests/test_device_path.py (that they build) and
``tools/gpu_check.py --dry-run`` (what they cost).
"""
import os
import re
import subprocess
import tempfile

import torch

from roi_plugin.layers import device_path, roi_align_kernels, rotated_kernels

TYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


def _signature(fn, dtype: str, pointer_names, index_names, int_names, float_names):
    sig = {}
    for name in fn.arg_names:
        if name in pointer_names:
            sig[name] = f"*{dtype}"
        elif name in index_names:
            sig[name] = "*i64"
        elif name == "rois_ptr":
            sig[name] = "*fp32"
        elif name in int_names:
            sig[name] = "i32"
        elif name in float_names:
            sig[name] = "fp32"
        else:
            sig[name] = "constexpr"
    return sig


def compile_for(direction: str, dtype: str = "fp32", output: int = 7, ratio: int = 0,
                pooler_type: str = "ROIAlignV2", levels: int = 4, capability: int = 90, num_warps: int = None,
                **overrides):
    """The ``direction`` ("forward"/"backward") kernel for maps of ``dtype`` compiled for compute
    capability ``capability`` (a ``triton.compiler.CompiledKernel`` with ``asm["ptx"]``, ``["cubin"]``);
    ``num_warps`` and ``overrides`` of the compile-time arguments try other block sizes."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    levels_args = [f"{c}{i}" for c in "HW" for i in range(device_path.MAX_LEVELS)]
    floats = [f"s{i}" for i in range(device_path.MAX_LEVELS)]
    name = device_path.kernel_name(pooler_type, direction)
    fn = getattr(rotated_kernels if "rotated" in name else roi_align_kernels, name)
    if direction == "forward":
        meta = device_path.forward_meta((output, output), ratio, pooler_type, TYPES[dtype], levels)
        pointers = {"out_ptr"} | {f"f{i}" for i in range(device_path.MAX_LEVELS)}
        sig = _signature(fn, dtype, pointers, {"level_ptr"}, set(levels_args) | {"C"}, floats)
    else:
        meta = device_path.backward_meta((output, output), ratio, pooler_type, TYPES[dtype], levels)
        pointers = {"grad_ptr"} | {f"d{i}" for i in range(device_path.MAX_LEVELS)}
        ints = set(levels_args) | {f"P{i}" for i in range(1, device_path.MAX_LEVELS)} | {"C", "B"}
        sig = _signature(fn, dtype, pointers, {"level_ptr", "order_ptr", "seg_ptr"}, ints, floats)
    meta.update(overrides)
    warps = num_warps or meta.pop("num_warps")
    meta.pop("num_warps", None)
    try:
        src = ASTSource(fn=fn, signature=sig, constexprs=meta)
    except TypeError:  # Triton 3.0 (torch 2.4): types and constants by argument position
        index = {name: i for i, name in enumerate(fn.arg_names)}
        src = ASTSource(fn=fn, signature={index[n]: t for n, t in sig.items() if t != "constexpr"},
                        constants={index[n]: v for n, v in meta.items()})
    return triton.compile(src, target=GPUTarget("cuda", capability, 32),
                          options=dict(num_warps=warps, enable_fp_fusion=False))


def resources(kernel, capability: int = 90) -> dict:
    """Registers per thread, spill stores/loads (bytes) and shared memory of a compiled kernel,
    from the ptxas that ships with Triton (``ptxas -v``); {} where it cannot be run."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        return {}
    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(kernel.asm["ptx"])
        res = subprocess.run([ptxas, "-v", f"-arch={arch}", path, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True)
    text = res.stdout + res.stderr
    info = {}
    for key, pattern in (("registers", r"Used (\d+) registers"), ("spill_stores", r"(\d+) bytes spill stores"),
                         ("spill_loads", r"(\d+) bytes spill loads"), ("shared", r"(\d+) bytes smem")):
        m = re.search(pattern, text)
        if m:
            info[key] = int(m.group(1))
    return info


def main(argv=None):
    """Compile the kernels for the GPU of ``--capability`` (several dtypes and output sizes) and
    print one JSON line per kernel: what it is, whether its PTX holds atomics or approximate
    divisions, and its registers and spills. Run it without ``TRITON_INTERPRET`` (the interpreter
    replaces the compiler)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--capability", type=int, default=90, help="compute capability x 10 (90: H100, H200)")
    parser.add_argument("--kernels", default="forward:fp32:7,forward:fp16:14,backward:fp32:7,backward:bf16:14,"
                        "forward:fp32:7:rotated,backward:fp32:7:rotated",
                        help="DIRECTION:DTYPE:OUTPUT[:rotated],... to build")
    args = parser.parse_args(argv)
    for spec in args.kernels.split(","):
        direction, dtype, output, *rotated = spec.split(":")
        kernel = compile_for(direction, dtype, int(output), capability=args.capability,
                             pooler_type="ROIAlignRotated" if rotated else "ROIAlignV2")
        ptx = kernel.asm["ptx"]
        print(json.dumps(dict(kernel=spec, cubin_bytes=len(kernel.asm["cubin"]), atomics=ptx.count("atom."),
                              approximate_divisions=ptx.count("div.full.f32") + ptx.count("div.approx.f32"),
                              **resources(kernel, args.capability))), flush=True)


if __name__ == "__main__":
    main()
