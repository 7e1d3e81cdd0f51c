"""The official implementations behind the bench's backend calls: the "reference" row of bench_backends.

``ReferenceBackend(name, checkpoint)`` runs the released code, eager torch on CPU, with the
weights of ``checkpoint`` (ours and theirs share parameter names):

* ``mobile_sam``: MobileSAM's ``Sam`` (PyPI ``mobilesam-mirror``);
* ``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h``: Meta's ``segment_anything`` ``Sam``;
* ``lite_medsam``: the LiteMedSAM recipe of ``engine.reference.official`` (LiteMedSAM's TinyViT file and Meta's
  prompt encoder / mask decoder).

``encode`` takes the same preprocessed ``(1, 3, S, S)`` float32 image as our backends.
``decode`` takes the contract's decoder arrays (``engine.contract``) and runs Meta's own ONNX
decoder wrapper (``segment_anything.utils.onnx.SamOnnxModel``: its point and mask embedding)
and the official ``MaskDecoder.predict_masks``, so it returns all 4 mask tokens' low-res logits,
without the upsampling to the original image size (that is outside our timed decode too).
Test-only packages: missing ones raise ImportError naming the pip command.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

__all__ = ["ReferenceBackend"]

_PIP = {
    "mobile_sam": "pip install mobilesam-mirror timm (needs torch==2.14.1 torchvision==0.29.1)",
    "segment_anything": "pip install segment-anything",
}


def _import(module: str):  # noqa: ANN202 - a module
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise ImportError(f"the reference row needs {module}: {_PIP[module.split('.')[0]]} ({exc})") from exc


def _official_model(name: str, checkpoint: Path) -> SimpleNamespace:
    """``image_encoder`` (with ``img_size``), ``prompt_encoder``, ``mask_decoder`` of the official code."""
    if name == "lite_medsam":
        from engine.reference.official import LiteMedSamRecipe

        recipe = LiteMedSamRecipe(checkpoint)
        recipe.encoder.img_size = 256
        return SimpleNamespace(image_encoder=recipe.encoder, prompt_encoder=recipe.prompt_encoder,
                               mask_decoder=recipe.mask_decoder)
    if name == "mobile_sam":
        registry, kind = _import("mobile_sam").sam_model_registry, "vit_t"
    elif name in ("sam_vit_b", "sam_vit_l", "sam_vit_h"):
        registry, kind = _import("segment_anything").sam_model_registry, name[4:]
    else:
        raise ValueError(f"no reference implementation for {name!r}; use mobile_sam, lite_medsam or sam_vit_b/l/h")
    sam = registry[kind]().eval()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    missing, _ = sam.load_state_dict(state, strict=False)  # MobileSAM's unused classifier head may be absent
    if [k for k in missing if not k.startswith("image_encoder.head")]:
        raise ValueError(f"{checkpoint} does not hold {name} weights: missing {missing[:3]} ...")
    return SimpleNamespace(image_encoder=sam.image_encoder, prompt_encoder=sam.prompt_encoder,
                           mask_decoder=sam.mask_decoder)


class ReferenceBackend:
    """The official implementation of ``name`` with ``encode`` / ``decode`` as our backends (eager CPU)."""

    def __init__(self, name: str, checkpoint: Path) -> None:
        self.model = _official_model(name, Path(checkpoint))
        onnx_wrapper = _import("segment_anything.utils.onnx").SamOnnxModel
        self._wrapper = onnx_wrapper(self.model, return_single_mask=False)  # type: ignore[arg-type]

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> torch.Tensor:
        """``image`` float32 ``(1, 3, S, S)`` -> embedding ``(1, 256, 64, 64)``."""
        return self.model.image_encoder(torch.from_numpy(np.ascontiguousarray(image, np.float32)))

    @torch.inference_mode()
    def decode(self, embedding: torch.Tensor, point_coords: np.ndarray, point_labels: np.ndarray,
               mask_input: np.ndarray, has_mask_input: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Contract arrays -> ``(scores (B, 4), low_res_logits (B, 4, 256, 256))`` float32 numpy."""
        pc, pl, mi, hm = (torch.from_numpy(np.asarray(a, np.float32)) for a in
                          (point_coords, point_labels, mask_input, has_mask_input))
        sparse = self._wrapper._embed_points(pc, pl)
        dense = self._wrapper._embed_masks(mi, hm.reshape(-1, 1, 1, 1))
        masks, iou = self.model.mask_decoder.predict_masks(
            image_embeddings=embedding, image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
        )
        return iou.numpy(), masks.numpy()
