"""Encoder and decoder latency per model, ours beside the reference implementation, same run.

Usage: python bench/bench_model.py [--models mobile_sam lite_medsam sam_vit_b] [--repeats 5]

Reference implementations: Meta's ``segment_anything`` SamPredictor (SAM ViT-B, random weights),
MobileSAM's own SamPredictor (random weights) and the original LiteMedSAM recipe (real weights).
Each number is the median of ``--repeats`` runs after one warm-up; decoder = one prompt, including
post-processing to the original image size (as the reference predictors do).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.backends.torch_backend import TorchBackend  # noqa: E402
from engine.models.registry import get_spec, load_model  # noqa: E402
from engine.predictor import Predictor  # noqa: E402
from engine.transforms import resize_longest_side  # noqa: E402


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _reference(name: str, tmp: Path) -> tuple[object, Path]:
    """(reference SamPredictor-like object, checkpoint path holding the same weights)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "sam_vit_b":
            from segment_anything import SamPredictor, sam_model_registry
        else:
            from mobile_sam import SamPredictor, sam_model_registry
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b" if name == "sam_vit_b" else "vit_t"]().eval()
    ckpt = tmp / f"{name}.pt"
    torch.save(sam.state_dict(), ckpt)
    return SamPredictor(sam), ckpt


def bench(name: str, rgb: np.ndarray, repeats: int, tmp: Path) -> dict[str, float]:
    spec = get_spec(name)
    point = np.array([[rgb.shape[1] / 2, rgb.shape[0] / 2]], np.float32)
    box = np.array([rgb.shape[1] * 0.25, rgb.shape[0] * 0.25, rgb.shape[1] * 0.75, rgb.shape[0] * 0.75], np.float32)
    if name == "lite_medsam":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.refs import LiteMedSamRecipe, medsam_checkpoint

        ckpt = medsam_checkpoint()
        ref = LiteMedSamRecipe(ckpt)
        ref_enc = median_ms(lambda: ref.embed(rgb), repeats)
        ref_dec = median_ms(lambda: ref.segment(rgb, box), repeats) - ref_enc
        prompt = {"box_xyxy": box}
    else:
        ref, ckpt = _reference(name, tmp)
        resized = torch.from_numpy(resize_longest_side(rgb, 1024)).permute(2, 0, 1)[None].float()
        with torch.inference_mode():
            ref_enc = median_ms(lambda: ref.set_torch_image(resized, rgb.shape[:2]), repeats)
        ref_dec = median_ms(lambda: ref.predict(point_coords=point, point_labels=np.ones(1), multimask_output=False), repeats)
        prompt = {"points_xy": point}
    ours = Predictor(TorchBackend(load_model(name, ckpt), spec.input_size), spec)
    enc = median_ms(lambda: ours.set_image(rgb), repeats)
    dec = median_ms(lambda: ours.predict(**prompt), max(repeats, 20))
    return {"enc": enc, "ref_enc": ref_enc, "dec": dec, "ref_dec": ref_dec}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lite_medsam", "mobile_sam", "sam_vit_b"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image", default=None, help="default: shared truck.jpg, else a random 1200x1800 image")
    args = parser.parse_args()
    import cv2

    from tests.conftest import _data_dir

    data = _data_dir()
    path = Path(args.image) if args.image else (data / "sam_images" / "truck.jpg" if data else None)
    rgb = (cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) if path
           else np.random.default_rng(0).integers(0, 255, (1200, 1800, 3), dtype=np.uint8))
    tmp = Path(__import__("tempfile").mkdtemp())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, image {rgb.shape[1]}x{rgb.shape[0]}")
    print(f"{'model':<12} {'encoder ms':>11} {'ref ms':>9} {'ratio':>6} | {'decoder ms':>10} {'ref ms':>8} {'ratio':>6}")
    for name in args.models:
        r = bench(name, rgb, args.repeats, tmp)
        print(f"{name:<12} {r['enc']:>11.1f} {r['ref_enc']:>9.1f} {r['enc'] / r['ref_enc']:>6.2f} | "
              f"{r['dec']:>10.1f} {r['ref_dec']:>8.1f} {r['dec'] / r['ref_dec']:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
