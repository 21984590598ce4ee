# Copyright (c) roi_plugin authors. Licensed under the Apache License 2.0.
"""The notebook's pooler design, timed by the benchmark for comparison only (it is not exact
ROIAlign): per level, every ROI gets its own ``expand`` of its image's feature map and one
``grid_sample`` (``align_corners=True``, coordinates normalised by the *image* size), then an
average over the ratio x ratio samples of each bin. Its backward materialises one level-sized
gradient per ROI, so its time and memory grow linearly with the ROI count."""
import torch
import torch.nn.functional as F


class NotebookPooler(torch.nn.Module):
    def __init__(self, output: int, ratio: int, image_hw):
        super().__init__()
        self.output, self.ratio, self.image_hw = output, ratio, image_hw

    def forward(self, x, boxes):
        from detectron2.modeling.poolers import assign_boxes_to_levels
        from detectron2.structures import Boxes

        level_of = assign_boxes_to_levels([Boxes(b) for b in boxes], 2, 5, 224, 4)
        all_boxes = torch.cat(boxes)
        batch = torch.cat([torch.full((len(b),), i) for i, b in enumerate(boxes)])
        g = self.output * self.ratio
        out = x[0].new_zeros((len(all_boxes), x[0].shape[1], self.output, self.output))
        t = (torch.arange(g, dtype=x[0].dtype) + 0.5) / g
        h_img, w_img = self.image_hw
        for level, feat in enumerate(x):
            idx = (level_of == level).nonzero().flatten()
            if idx.numel() == 0:
                continue
            b = all_boxes[idx]
            xs = b[:, 0:1] + (b[:, 2:3] - b[:, 0:1]) * t  # (n, g) image pixels
            ys = b[:, 1:2] + (b[:, 3:4] - b[:, 1:2]) * t
            grid = torch.stack(
                torch.broadcast_tensors((xs / w_img * 2 - 1)[:, None, :], (ys / h_img * 2 - 1)[:, :, None]), -1
            )
            per_roi = feat[batch[idx]]  # one copy of the level map per ROI (the notebook's expand)
            samples = F.grid_sample(per_roi, grid, align_corners=True)
            out[idx] = F.avg_pool2d(samples, self.ratio)
        return out
