"""The float64 references of ``pooling_reference.py`` on cases with a known answer."""
import numpy as np

from pooling_reference import prroi_bin, prroi_pool_reference, roi_align_max_reference


def test_prroi_reference_integrates_planes_and_constants_exactly():
    h, w = 6, 7
    yy, xx = np.meshgrid(np.arange(h, dtype=float), np.arange(w, dtype=float), indexing="ij")
    plane = (2.0 + 0.5 * xx - 0.25 * yy)[None]
    # inside the map (away from the zero beyond it) the surface is the plane: the mean over a
    # rectangle is the plane at its centre
    a, b, c, d = 0.3, 4.7, 1.1, 3.9
    assert np.isclose(prroi_bin(plane, a, b, c, d)[0], 2.0 + 0.5 * (a + b) / 2 - 0.25 * (c + d) / 2, atol=1e-12)
    # a constant map: 1 inside, and over [-1, 0] x [0, 1] the surface falls linearly to 0: mean 1/2
    ones = np.ones((1, h, w))
    assert np.isclose(prroi_bin(ones, 1.2, 3.4, 2.0, 4.5)[0], 1.0)
    assert np.isclose(prroi_bin(ones, -1.0, 0.0, 1.0, 2.0)[0], 0.5)
    assert prroi_bin(ones, 2.0, 2.0, 1.0, 3.0)[0] == 0.0  # empty bin
    # a single non-zero pixel: the integral of one hat over the whole plane is 1
    spike = np.zeros((1, h, w))
    spike[0, 3, 3] = 1.0
    assert np.isclose(prroi_bin(spike, 1.5, 4.5, 1.0, 5.0)[0] * 3.0 * 4.0, 1.0)
    out = prroi_pool_reference(ones[None], np.array([[0, 4.0, 4.0, 12.0, 16.0]]), (2, 2), 0.25)
    assert np.allclose(out, 1.0)


def test_max_reference_on_a_ramp():
    # f = x: the largest sample of a bin is its right-most one
    feature = np.tile(np.arange(8, dtype=float), (1, 1, 5, 1))  # (1, 1, 5, 8)
    rois = np.array([[0, 1.0, 1.0, 5.0, 3.0]])
    out, grad = roi_align_max_reference(feature, rois, (1, 2), 1.0, 2, aligned=False, grad=np.ones((1, 1, 1, 2)))
    # legacy: x from 1 to 5, bins [1, 3] and [3, 5], samples at 1.5, 2.5 and 3.5, 4.5
    assert np.allclose(out[0, 0, 0], [2.5, 4.5])
    assert np.isclose(grad.sum(), 2.0)  # each bin's gradient split over its winner's taps
