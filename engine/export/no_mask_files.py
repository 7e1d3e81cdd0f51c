"""Files and names of the internal no-mask decoder pair (see ``engine.export.no_mask``), without torch:
``OrtBackend`` finds and checks the pair through this module.

Both pair files carry the sha256 of the contract decoder file they were exported with (ONNX
``metadata_props`` key ``CONTRACT_SHA256_KEY``); ``pair_is_current`` checks it.
"""

from __future__ import annotations

from pathlib import Path

from engine.contract import EMBED_HW

IMAGE_SIDE_OUTPUTS = ("side_keys", "side_k", "side_v", "side_q_t")
# ``roi``: int64 ``(4,)`` image-token window ``(row0, row1, col0, col1)`` of the 64x64 grid; the prompt
# graph's ``low_res_masks`` cover that window only, ``(B, 4, 4 (row1 - row0), 4 (col1 - col0))``.
NO_MASK_INPUTS = (*IMAGE_SIDE_OUTPUTS, "point_coords", "point_labels", "roi")
WHOLE_ROI = (0, EMBED_HW[0], 0, EMBED_HW[1])
CONTRACT_SHA256_KEY = "arsel_contract_decoder_sha256"

__all__ = ["CONTRACT_SHA256_KEY", "IMAGE_SIDE_OUTPUTS", "NO_MASK_INPUTS", "WHOLE_ROI", "no_mask_paths",
           "pair_is_current"]


def no_mask_paths(decoder_path: Path) -> tuple[Path, Path]:
    """``(image side, prompt graph)`` paths of the pair for a contract decoder file."""
    decoder_path = Path(decoder_path)
    stem = decoder_path.with_suffix("")
    return Path(f"{stem}_image_side.onnx"), Path(f"{stem}_no_mask.onnx")


def pair_is_current(decoder_path: Path, pair_metadata: list[dict[str, str]]) -> bool:
    """Whether every pair file's metadata names the sha256 of the contract decoder file now at
    ``decoder_path`` (``pair_metadata``: each file's ``custom_metadata_map``, ONNX Runtime's view
    of ``metadata_props``). False for files without the key (older exports)."""
    from engine.weights import sha256_file

    recorded = {meta.get(CONTRACT_SHA256_KEY) for meta in pair_metadata}
    return None not in recorded and recorded == {sha256_file(Path(decoder_path))}
