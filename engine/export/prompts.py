"""Decoder prompt arrays like the predictor makes, for export checks, parity tests and benchmarks."""

from __future__ import annotations

import numpy as np

from engine.contract import LOW_RES_HW

__all__ = ["realistic_prompts"]


def realistic_prompts(batch: int, points: int, side: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Decoder prompt arrays like the predictor makes: coords in ``[0, S)``, labels 1/0 with a box.

    Prompt i has ``points`` entries: when ``points >= 3`` the last two are a box (labels 2, 3),
    the others clicks (1 or 0); otherwise clicks plus -1 padding at the end. Every other prompt
    has a previous mask (``has_mask_input`` 1). Returns float32 arrays keyed by contract name.
    """
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, side - 1, (batch, points, 2)).astype(np.float32)
    labels = rng.integers(0, 2, (batch, points)).astype(np.float32)
    if points >= 3:
        labels[:, -2:] = (2.0, 3.0)
        corners = np.sort(coords[:, -2:, :], axis=1)
        coords[:, -2:, :] = corners
    elif points == 2:
        labels[:, -1] = -1.0
        coords[:, -1] = 0.0
    mask = (rng.standard_normal((batch, 1, *LOW_RES_HW)) * 4).astype(np.float32)
    has = (np.arange(batch) % 2).astype(np.float32)
    return {"point_coords": coords, "point_labels": labels, "mask_input": mask, "has_mask_input": has}
