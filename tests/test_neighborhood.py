"""Tests of the causal neighbourhood geometry and extraction (ride/neighborhood.py)."""
from __future__ import annotations

import pytest
import torch

from ride.neighborhood import Neighborhood, check_images


def _expected_mask(n: int) -> list[list[bool]]:
    """Mask written out from REFERENCE.md: all rows above the target, the pixels left of it."""
    rows, centre = (n + 1) // 2, (n - 1) // 2
    return [[r < rows - 1 or c < centre for c in range(n)] for r in range(rows)]


@pytest.mark.parametrize(
    "n, rows, dim, target",
    [(3, 2, 4, (1, 1)), (5, 3, 12, (2, 2)), (9, 5, 40, (4, 4))],
)
def test_geometry(n, rows, dim, target):
    nb = Neighborhood(n)
    assert nb.rows == rows
    assert nb.cols == n
    assert nb.dim == dim
    assert nb.target == target
    mask = nb.mask()
    assert mask.dtype == torch.bool
    assert tuple(mask.shape) == (rows, n)
    assert int(mask.sum()) == dim
    assert mask.tolist() == _expected_mask(n)
    # The target itself and everything right of it on its row are not inputs.
    assert not mask[target].item()
    assert not mask[rows - 1, target[1]:].any()


def test_n5_mask_explicit():
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1],
            [1, 1, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(Neighborhood(5).mask(), expected)


def _naive_extract(images: torch.Tensor, n: int):
    """Per-pixel python loop: inputs read row-major from the causal window, target in its centre."""
    rows, half = (n + 1) // 2, (n - 1) // 2
    n_img, height, width = images.shape
    all_inputs, all_targets = [], []
    for k in range(n_img):
        img_in, img_tg = [], []
        for y in range(rows - 1, height):
            row_in, row_tg = [], []
            for x in range(half, width - half):
                vec = []
                for dy in range(-(rows - 1), 1):
                    for dx in range(-half, half + 1):
                        if dy == 0 and dx >= 0:
                            continue
                        vec.append(float(images[k, y + dy, x + dx]))
                row_in.append(vec)
                row_tg.append(float(images[k, y, x]))
            img_in.append(row_in)
            img_tg.append(row_tg)
        all_inputs.append(img_in)
        all_targets.append(img_tg)
    return torch.tensor(all_inputs, dtype=torch.float64), torch.tensor(all_targets, dtype=torch.float64)


@pytest.mark.parametrize("n, shape", [(3, (2, 4, 6)), (5, (2, 7, 9)), (5, (1, 3, 5)), (9, (1, 6, 11))])
def test_extract_matches_naive_loop(n, shape):
    gen = torch.Generator().manual_seed(n * 100 + shape[1])
    images = torch.randn(*shape, generator=gen, dtype=torch.float64)
    inputs, targets = Neighborhood(n).extract(images)
    exp_in, exp_tg = _naive_extract(images, n)
    assert inputs.shape == exp_in.shape
    assert targets.shape == exp_tg.shape
    assert torch.equal(inputs, exp_in)
    assert torch.equal(targets, exp_tg)


def test_extract_float32_and_grid_shape_n5():
    nb = Neighborhood(5)
    images = torch.randn(3, 8, 11)
    inputs, targets = nb.extract(images)
    assert nb.grid_shape(8, 11) == (6, 7)
    assert tuple(inputs.shape) == (3, 6, 7, 12)
    assert tuple(targets.shape) == (3, 6, 7)
    assert inputs.dtype == torch.float32
    # Grid cell (gi, gj) targets image pixel (gi + rows - 1, gj + (n - 1) // 2).
    for gi, gj in [(0, 0), (5, 6), (2, 3)]:
        assert targets[1, gi, gj] == images[1, gi + 2, gj + 2]
    rs, cs = nb.target_slices(8, 11)
    assert torch.equal(images[:, rs, cs], targets)


def test_extract_is_differentiable():
    images = torch.randn(1, 4, 6, dtype=torch.float64, requires_grad=True)
    inputs, targets = Neighborhood(3).extract(images)
    (inputs.sum() + targets.sum()).backward()
    # Interior pixels are used by several windows: counts must match a naive count.
    counts = torch.zeros(4, 6, dtype=torch.float64)
    for y in range(1, 4):
        for x in range(1, 5):
            counts[y, x] += 1
            for dy, dx in [(-1, -1), (-1, 0), (-1, 1), (0, -1)]:
                counts[y + dy, x + dx] += 1
    assert torch.equal(images.grad[0], counts)


@pytest.mark.parametrize("n, height, width", [(5, 2, 10), (5, 10, 4), (9, 4, 20), (3, 1, 3)])
def test_image_smaller_than_neighbourhood(n, height, width):
    with pytest.raises(ValueError, match="smaller than"):
        Neighborhood(n).extract(torch.zeros(1, height, width))


def test_minimal_image_is_accepted():
    inputs, targets = Neighborhood(5).extract(torch.zeros(1, 3, 5))
    assert tuple(inputs.shape) == (1, 1, 1, 12)
    assert tuple(targets.shape) == (1, 1, 1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_pixels(bad):
    images = torch.zeros(2, 6, 6)
    images[1, 3, 4] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        Neighborhood(3).extract(images)


@pytest.mark.parametrize("shape", [(6, 6), (1, 1, 6, 6), (6,)])
def test_wrong_rank(shape):
    with pytest.raises(ValueError, match="rank"):
        Neighborhood(3).extract(torch.zeros(shape))


def test_integer_images_rejected():
    with pytest.raises(ValueError, match="floating point"):
        check_images(torch.zeros(1, 6, 6, dtype=torch.int64))


def test_non_tensor_rejected():
    with pytest.raises(TypeError):
        check_images([[[0.0]]])


@pytest.mark.parametrize("n", [4, 2, 1, 0, -3, 6])
def test_even_or_too_small_n(n):
    with pytest.raises(ValueError, match="odd integer >= 3"):
        Neighborhood(n)


def test_non_integer_n():
    with pytest.raises(ValueError, match="odd integer"):
        Neighborhood(5.0)
