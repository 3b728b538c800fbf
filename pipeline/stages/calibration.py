"""The calibration images of every int8 model: one seeded, class-stratified draw.

The int8 .tflite (convert.py), the ONNX Runtime int8 model (convert_onnx.py) and the
per-layer debugger (layers.py) calibrate on the very same images, so this draw lives in its
own module: each of those tasks depends on it, and on none of the others' recipes.
"""

from __future__ import annotations

import numpy as np


def representative_indices(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` indices drawn without replacement, each class in proportion to its frequency."""
    if not 0 < count <= len(labels):
        # Never clip silently: the caller's params asked for more than there is.
        raise ValueError(f"cannot draw {count} of {len(labels)} images")
    rng = np.random.default_rng(seed)
    classes, freq = np.unique(labels, return_counts=True)
    # Largest-remainder apportionment: shares sum to `count` exactly.
    exact = freq / freq.sum() * count
    share = np.floor(exact).astype(int)
    share[np.argsort(share - exact)[: count - share.sum()]] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), size=s, replace=False)
              for c, s in zip(classes, share)]
    return np.sort(np.concatenate(picked))
