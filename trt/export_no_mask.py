"""Deprecated: the no-mask decoder pair moved to ``engine.export.no_mask``. This alias module goes
away in the next release."""

import warnings

from engine.export.no_mask import (
    CONTRACT_SHA256_KEY,
    IMAGE_SIDE_OUTPUTS,
    NO_MASK_INPUTS,
    compare_no_mask_decoder,
    export_no_mask_decoder,
    export_no_mask_pair,
    no_mask_paths,
    pair_is_current,
)

warnings.warn("trt.export_no_mask moved to engine.export.no_mask; import it from there", DeprecationWarning,
              stacklevel=2)

__all__ = [
    "CONTRACT_SHA256_KEY", "IMAGE_SIDE_OUTPUTS", "NO_MASK_INPUTS", "compare_no_mask_decoder",
    "export_no_mask_decoder", "export_no_mask_pair", "no_mask_paths", "pair_is_current",
]
