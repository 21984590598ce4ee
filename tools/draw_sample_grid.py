#!/usr/bin/env python
# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""Draw the sample grid of one ROI, as roi_plugin.layers.geometry computes it.

A 6 x 5 level (pixel centres at integer coordinates, footprints as squares), an ROI of
2 x 2 bins with 2 x 2 samples per bin that crosses the left and bottom borders: the
samples, the one-pixel margin inside which samples are valid (a sample outside it is
crossed out: it adds 0 to its bin's mean), and the four bilinear taps of one sample with
their weights (including the mean's 1/4).

    python tools/draw_sample_grid.py            # writes docs/sample_grid.png
"""
import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from roi_plugin.layers.geometry import axis_samples  # noqa: E402

W, H, POOLED, RATIO = 6, 5, 2, 2
ROI = (-1.9, 0.4, 3.3, 5.2)  # x1, y1, x2, y2 in level pixel-centre coordinates
TAPPED = (1, 2)  # (y, x) index of the sample whose taps are drawn, over all samples of the ROI


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "..", "docs", "sample_grid.png"))
    args = parser.parse_args()
    x1, y1, x2, y2 = ROI
    grid = torch.tensor([RATIO])
    ys = axis_samples(torch.tensor([y1]), torch.tensor([y2 - y1]), POOLED, grid, RATIO, H)
    xs = axis_samples(torch.tensor([x1]), torch.tensor([x2 - x1]), POOLED, grid, RATIO, W)
    flat = lambda t: t[0].flatten().tolist()  # (1, P, G) -> P*G values, in order along the axis
    yc, xc = flat(ys.coord), flat(xs.coord)
    yv = [a + b for a, b in zip(flat(ys.w_low), flat(ys.w_high))]
    xv = [a + b for a, b in zip(flat(xs.w_low), flat(xs.w_high))]

    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    ax.add_patch(plt.Rectangle((-1, -1), W + 1, H + 1, facecolor="#e8f4e8", edgecolor="green", ls=":", zorder=0,
                               label="valid samples: [-1, size] on each axis"))
    for i in range(H):
        for j in range(W):
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, color="0.75", lw=0.8))
            ax.plot(j, i, ".", color="0.5", ms=4)
    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="C0", lw=2, label="ROI (2 x 2 bins)"))
    for k in range(1, POOLED):
        ax.plot([x1 + k * (x2 - x1) / POOLED] * 2, [y1, y2], color="C0", lw=1.2)
        ax.plot([x1, x2], [y1 + k * (y2 - y1) / POOLED] * 2, color="C0", lw=1.2)
    for i, (y, wy) in enumerate(zip(yc, yv)):
        for j, (x, wx) in enumerate(zip(xc, xv)):
            if wy * wx > 0:
                ax.plot(x, y, "o", color="C3", ms=7, zorder=3)
            else:
                ax.plot(x, y, "x", color="C3", ms=9, mew=2, zorder=3)
    i, j = TAPPED
    y, x = yc[i], xc[j]
    taps = [(yy, wy, xx, wx) for yy, wy in ((ys.low, ys.w_low), (ys.high, ys.w_high))
            for xx, wx in ((xs.low, xs.w_low), (xs.high, xs.w_high))]
    for yy, wy, xx, wx in taps:
        ty, tx = flat(yy)[i], flat(xx)[j]
        w = flat(wy)[i] * flat(wx)[j]
        ax.plot([x, tx], [y, ty], "-", color="C1", lw=1.5, zorder=2)
        ax.annotate(f"{w:.3f}", (tx, ty), xytext=(4, -10), textcoords="offset points", color="C1", fontsize=9)
    ax.plot([], [], "o", color="C3", label="sample at a sub-bin centre")
    ax.plot([], [], "x", color="C3", mew=2, label="sample > 1 px outside: adds 0")
    ax.plot([], [], "-", color="C1", label="bilinear taps of one sample, weight x 1/(gh*gw)")
    ax.set_xlim(-2.5, W + 0.5)
    ax.set_ylim(H + 1.0, -1.5)  # image convention: y down
    ax.set_aspect("equal")
    ax.set_xlabel("x (level pixels; integers are pixel centres)")
    ax.set_ylabel("y")
    ax.set_title("ROIAlign: one ROI, 2 x 2 bins, sampling_ratio 2, on a 6 x 5 level")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    fig.savefig(args.output, dpi=80, bbox_inches="tight")
    print(f"wrote {os.path.abspath(args.output)}")


if __name__ == "__main__":
    main()
