# Ported from torchvision (Copyright (c) Soumith Chintala 2016, BSD 3-Clause License):
# test/test_ops.py, classes RoIOpTester, TestRoiPool and TestRoIAlign.
"""torchvision's own tests of ``roi_pool`` and ``roi_align`` (the kernels behind Detectron2's
``ROIPooler``), run against :class:`ROIAlignPooler` (issue 29.1, 29.6, 29.7).

A drop-in passes the tests of what it replaces. Changes from upstream: the op under test is
``ROIAlignPooler`` with one level (``scales=(spatial_scale,)``) called with one box list per
image instead of a ``(K, 5)`` tensor (``_call``); ``pooler_type`` ``ROIPool`` or
``ROIAlign``/``ROIAlignV2``; CUDA/MPS/autocast branches dropped; float16 forward compared at
upstream's half tolerance (the pooler samples half maps in float32); ``test_backward`` runs 3
seeds; for ``test_is_leaf_node`` the wrapper returns the pooled tensor; the quantized tests
use the pooler (upstream's kernel takes one image only, so ``test_qroi_align_multiple_images``,
which asserts that error upstream, here asserts per-image equality instead). Reference
functions (``expected_fn``) and assertions are upstream's.
"""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd import gradcheck
from torchvision import ops
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from detectron2.structures import Boxes

from roi_plugin import ROIAlignPooler


def _rois_to_lists(rois, batch):
    return [rois[rois[:, 0] == i, 1:] for i in range(batch)]


def _call(pooler, x, rois):
    """The pooler on a (K, 5) rois tensor whose image indices are sorted (upstream's are)."""
    assert bool((rois[1:, 0] >= rois[:-1, 0]).all())
    return pooler([x], _rois_to_lists(rois, x.shape[0]))


class PoolerOnRois(nn.Module):
    """upstream's RoIOpTesterModuleWrapper, returning the output, around the pooler."""

    def __init__(self, pooler):
        super().__init__()
        self.layer = pooler
        self.n_inputs = 2

    def forward(self, a, b):
        return self.layer([a], [b])


ROIS = [[0, 0, 0, 9, 9], [0, 0, 5, 4, 9], [0, 5, 5, 9, 9], [1, 0, 0, 9, 9]]


class RoIOpTester:
    dtype = torch.float64

    @pytest.mark.parametrize("contiguous", (True, False))
    @pytest.mark.parametrize("x_dtype", (torch.float16, torch.float32, torch.float64), ids=str)
    def test_forward(self, contiguous, x_dtype):
        tol = 4e-3 if x_dtype is torch.half else 1e-5
        pool_size = 5
        n_channels = 2 * (pool_size**2)
        x = torch.rand(2, n_channels, 10, 10, dtype=x_dtype)
        if not contiguous:
            x = x.permute(0, 1, 3, 2)
        rois = torch.tensor(ROIS, dtype=x_dtype)
        y = self.fn(x, rois, pool_size, pool_size, spatial_scale=1, sampling_ratio=-1)
        assert y.dtype == x.dtype
        gt_y = self.expected_fn(x.double(), rois.double(), pool_size, pool_size, spatial_scale=1, sampling_ratio=-1)
        torch.testing.assert_close(gt_y.to(y), y, rtol=tol, atol=tol)

    def test_is_leaf_node(self):
        op_obj = PoolerOnRois(self.make_obj())
        graph_node_names = get_graph_node_names(op_obj)
        assert len(graph_node_names) == 2
        assert len(graph_node_names[0]) == len(graph_node_names[1])
        assert len(graph_node_names[0]) == 1 + op_obj.n_inputs

    def test_torch_fx_trace(self, x_dtype=torch.float, rois_dtype=torch.float):
        op_obj = PoolerOnRois(self.make_obj())
        graph_module = torch.fx.symbolic_trace(op_obj)
        pool_size = 5
        n_channels = 2 * (pool_size**2)
        x = torch.rand(1, n_channels, 5, 5, dtype=x_dtype)  # one image: one box list
        boxes = torch.tensor([r[1:] for r in ROIS], dtype=rois_dtype)
        output_gt = op_obj(x, boxes)
        assert output_gt.dtype == x.dtype
        output_fx = graph_module(x, boxes)
        assert output_fx.dtype == x.dtype
        tol = 1e-5
        torch.testing.assert_close(output_gt, output_fx, rtol=tol, atol=tol)

    @pytest.mark.slow  # gradcheck, eager and scripted: 2-9 s each
    @pytest.mark.parametrize("seed", range(3))
    @pytest.mark.parametrize("contiguous", (True, False))
    def test_backward(self, seed, contiguous):
        atol = 1e-05
        torch.random.manual_seed(seed)
        pool_size = 2
        x = torch.rand(1, 2 * (pool_size**2), 5, 5, dtype=self.dtype, requires_grad=True)
        if not contiguous:
            x = x.permute(0, 1, 3, 2)
        rois = torch.tensor([[0, 0, 0, 4, 4], [0, 0, 2, 3, 4], [0, 2, 2, 4, 4]], dtype=self.dtype)

        def func(z):
            return self.fn(z, rois, pool_size, pool_size, spatial_scale=1, sampling_ratio=1)

        scripted = torch.jit.script(self.make_obj(pool_size, pool_size, sampling_ratio=1))

        def script_func(z):
            return scripted([z], [Boxes(b) for b in _rois_to_lists(rois, 1)])

        gradcheck(func, (x,), atol=atol)
        gradcheck(script_func, (x,), atol=atol)

    def test_boxes_shape(self):
        a = torch.linspace(1, 8 * 8, 8 * 8).reshape(1, 1, 8, 8)
        with pytest.raises(ValueError, match="Nx4"):  # upstream: AssertionError
            self.make_obj(2, 2)([a], [torch.tensor([[0, 0, 3]], dtype=a.dtype)])

    def test_jit_boxes_list(self):
        model = torch.jit.script(self.make_obj(3, 3))
        x = torch.rand(2, 1, 10, 10)
        roi = torch.tensor([[0, 0, 9, 9], [0, 5, 4, 9], [5, 5, 9, 9], [0, 0, 9, 9], [2, 2, 7, 7]], dtype=torch.float)
        y = model([x], [Boxes(roi), Boxes(roi)])
        assert y.shape == (10, 1, 3, 3)


class TestRoiPool(RoIOpTester):
    def fn(self, x, rois, pool_h, pool_w, spatial_scale=1, sampling_ratio=-1, **kwargs):
        return _call(self.make_obj(pool_h, pool_w, spatial_scale), x, rois)

    def make_obj(self, pool_h=5, pool_w=5, spatial_scale=1, sampling_ratio=0):
        return ROIAlignPooler((pool_h, pool_w), (spatial_scale,), 0, "ROIPool")

    def expected_fn(self, x, rois, pool_h, pool_w, spatial_scale=1, sampling_ratio=-1, dtype=torch.float64):
        n_channels = x.size(1)
        y = torch.zeros(rois.size(0), n_channels, pool_h, pool_w, dtype=dtype)

        def get_slice(k, block):
            return slice(int(np.floor(k * block)), int(np.ceil((k + 1) * block)))

        for roi_idx, roi in enumerate(rois):
            batch_idx = int(roi[0])
            j_begin, i_begin, j_end, i_end = (int(round(x.item() * spatial_scale)) for x in roi[1:])
            roi_x = x[batch_idx, :, i_begin : i_end + 1, j_begin : j_end + 1]

            roi_h, roi_w = roi_x.shape[-2:]
            bin_h = roi_h / pool_h
            bin_w = roi_w / pool_w

            for i in range(0, pool_h):
                for j in range(0, pool_w):
                    bin_x = roi_x[:, get_slice(i, bin_h), get_slice(j, bin_w)]
                    if bin_x.numel() > 0:
                        y[roi_idx, :, i, j] = bin_x.reshape(n_channels, -1).max(dim=1)[0]
        return y


def bilinear_interpolate(data, y, x, snap_border=False):
    height, width = data.shape

    if snap_border:
        if -1 < y <= 0:
            y = 0
        elif height - 1 <= y < height:
            y = height - 1

        if -1 < x <= 0:
            x = 0
        elif width - 1 <= x < width:
            x = width - 1

    y_low = int(math.floor(y))
    x_low = int(math.floor(x))
    y_high = y_low + 1
    x_high = x_low + 1

    wy_h = y - y_low
    wx_h = x - x_low
    wy_l = 1 - wy_h
    wx_l = 1 - wx_h

    val = 0
    for wx, xp in zip((wx_l, wx_h), (x_low, x_high)):
        for wy, yp in zip((wy_l, wy_h), (y_low, y_high)):
            if 0 <= yp < height and 0 <= xp < width:
                val += wx * wy * data[yp, xp]
    return val


@pytest.mark.parametrize("aligned", (True, False))
class TestRoIAlign(RoIOpTester):
    @pytest.fixture(autouse=True)
    def _aligned(self, aligned):
        self.aligned = aligned

    def fn(self, x, rois, pool_h, pool_w, spatial_scale=1, sampling_ratio=-1, **kwargs):
        return _call(self.make_obj(pool_h, pool_w, spatial_scale, sampling_ratio), x, rois)

    def make_obj(self, pool_h=5, pool_w=5, spatial_scale=1, sampling_ratio=-1):
        return ROIAlignPooler((pool_h, pool_w), (spatial_scale,), sampling_ratio,
                              "ROIAlignV2" if self.aligned else "ROIAlign")

    def expected_fn(self, in_data, rois, pool_h, pool_w, spatial_scale=1, sampling_ratio=-1, dtype=torch.float64):
        aligned = self.aligned
        n_channels = in_data.size(1)
        out_data = torch.zeros(rois.size(0), n_channels, pool_h, pool_w, dtype=dtype)

        offset = 0.5 if aligned else 0.0

        for r, roi in enumerate(rois):
            batch_idx = int(roi[0])
            j_begin, i_begin, j_end, i_end = (x.item() * spatial_scale - offset for x in roi[1:])

            roi_h = i_end - i_begin
            roi_w = j_end - j_begin
            if not aligned:  # the legacy kernel's 1-pixel minimum (upstream's ROIs are all larger)
                roi_h, roi_w = max(roi_h, 1.0), max(roi_w, 1.0)
            bin_h = roi_h / pool_h
            bin_w = roi_w / pool_w

            for i in range(0, pool_h):
                start_h = i_begin + i * bin_h
                grid_h = sampling_ratio if sampling_ratio > 0 else int(np.ceil(bin_h))
                for j in range(0, pool_w):
                    start_w = j_begin + j * bin_w
                    grid_w = sampling_ratio if sampling_ratio > 0 else int(np.ceil(bin_w))

                    for channel in range(0, n_channels):
                        val = 0
                        for iy in range(0, grid_h):
                            y = start_h + (iy + 0.5) * bin_h / grid_h
                            for ix in range(0, grid_w):
                                x = start_w + (ix + 0.5) * bin_w / grid_w
                                val += bilinear_interpolate(in_data[batch_idx, channel, :, :], y, x, snap_border=True)
                        val /= grid_h * grid_w

                        out_data[r, channel, i, j] = val
        return out_data

    def _make_rois(self, img_size, num_imgs, dtype, num_rois=1000):
        rois = torch.randint(0, img_size // 2, size=(num_rois, 5)).to(dtype)
        rois[:, 0] = torch.randint(0, num_imgs, size=(num_rois,))  # set batch index
        rois[:, 3:] += rois[:, 1:3]  # make sure boxes aren't degenerate
        return rois[rois[:, 0].argsort(stable=True)]  # the pooler takes boxes image by image

    @pytest.mark.parametrize("scale, zero_point", ((1, 0), (2, 10), (0.1, 50)))
    @pytest.mark.parametrize("qdtype", (torch.qint8, torch.quint8, torch.qint32))
    def test_qroialign(self, scale, zero_point, qdtype):
        """Make sure quantized version of RoIAlign is close to float version"""
        pool_size = 5
        img_size = 10
        n_channels = 2
        num_imgs = 1
        dtype = torch.float

        x = torch.randint(50, 100, size=(num_imgs, n_channels, img_size, img_size)).to(dtype)
        qx = torch.quantize_per_tensor(x, scale=scale, zero_point=zero_point, dtype=qdtype)

        rois = self._make_rois(img_size, num_imgs, dtype)
        qrois = torch.quantize_per_tensor(rois, scale=scale, zero_point=zero_point, dtype=qdtype)

        x, rois = qx.dequantize(), qrois.dequantize()  # we want to pass the same inputs

        pooler = self.make_obj(pool_size, pool_size, 1, -1)
        y = _call(pooler, x, rois)
        qy = pooler([qx], [qrois[:, 1:]])  # one image: the quantized boxes as they come

        # The output qy is itself a quantized tensor and there might have been a loss of info when it was
        # quantized. For a fair comparison we need to quantize y as well
        quantized_float_y = torch.quantize_per_tensor(y, scale=scale, zero_point=zero_point, dtype=qdtype)

        try:
            # Ideally, we would assert this, which passes with (scale, zero) == (1, 0)
            assert (qy == quantized_float_y).all()
        except AssertionError:
            # But because the computation aren't exactly the same between the 2 RoIAlign procedures, some
            # rounding error may lead to a difference of 2 in the output.
            # For example with (scale, zero) = (2, 10), 45.00000... will be quantized to 44
            # but 45.00000001 will be rounded to 46. We make sure below that:
            # - such discrepancies between qy and quantized_float_y are very rare (less then 5%)
            # - any difference between qy and quantized_float_y is == scale
            diff_idx = torch.where(qy != quantized_float_y)
            num_diff = diff_idx[0].numel()
            assert num_diff / qy.numel() < 0.05

            abs_diff = torch.abs(qy[diff_idx].dequantize() - quantized_float_y[diff_idx].dequantize())
            t_scale = torch.full_like(abs_diff, fill_value=scale)
            torch.testing.assert_close(abs_diff, t_scale, rtol=1e-5, atol=1e-5)
        # and torchvision's own quantized kernel gives the same integers (one image: it allows that)
        tv = ops.roi_align(qx, qrois, output_size=pool_size, spatial_scale=1, sampling_ratio=-1, aligned=self.aligned)
        assert (tv.int_repr().int() - qy.int_repr().int()).abs().max() <= 1

    def test_qroi_align_multiple_images(self):
        dtype = torch.float
        x = torch.randint(50, 100, size=(2, 3, 10, 10)).to(dtype)
        qx = torch.quantize_per_tensor(x, scale=1, zero_point=0, dtype=torch.qint8)
        rois = self._make_rois(img_size=10, num_imgs=2, dtype=dtype, num_rois=10)
        qrois = torch.quantize_per_tensor(rois, scale=1, zero_point=0, dtype=torch.qint8)
        # upstream: RuntimeError "Only one image per batch is allowed"; the pooler takes a batch,
        # each image's ROIs as the one-image kernel pools them
        qy = _call(self.make_obj(5, 5, 1, 0), qx, qrois.dequantize())
        assert qy.is_quantized and qy.q_scale() == 1 and qy.q_zero_point() == 0 and qy.shape == (10, 3, 5, 5)
        for i in range(2):
            sel = rois[:, 0] == i
            one = ops.roi_align(qx[i:i + 1], torch.quantize_per_tensor(torch.cat([torch.zeros(int(sel.sum()), 1),
                                                                                  rois[sel, 1:]], 1), 1, 0, torch.qint8),
                                output_size=5, spatial_scale=1, sampling_ratio=0, aligned=self.aligned)
            assert (one.int_repr().int() - qy[sel].int_repr().int()).abs().max() <= 1


def test_create_feature_extractor_on_a_model_holding_the_pooler():
    """torchvision's FX tooling on a model that pools ROIs: the pooling is one leaf node, and the
    extracted features equal the model's."""

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, stride=4, padding=1)
            self.pooler = ROIAlignPooler(7, (1 / 4,), 0, "ROIAlignV2")
            self.head = nn.Linear(4 * 49, 2)

        def forward(self, image, boxes):
            pooled = self.pooler([self.stem(image)], [boxes])
            return self.head(pooled.flatten(1))

    model = Tiny().eval()
    train_nodes, eval_nodes = get_graph_node_names(model)
    leaf = [n for n in eval_nodes if n.startswith("pooler")]
    assert len(leaf) == 1, eval_nodes
    extractor = create_feature_extractor(model, return_nodes={leaf[0]: "pooled", "head": "out"})
    image, boxes = torch.rand(1, 3, 64, 64), torch.tensor([[4.0, 8.0, 40.0, 50.0], [0.0, 0.0, 63.0, 63.0]])
    got = extractor(image, boxes)
    torch.testing.assert_close(got["out"], model(image, boxes), rtol=0, atol=0)
    torch.testing.assert_close(got["pooled"], model.pooler([model.stem(image)], [boxes]), rtol=0, atol=0)
