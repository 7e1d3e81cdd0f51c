"""Encoder and decoder latency per model, ours beside the reference implementation, same run.

Usage: python bench/bench_model.py [--models mobile_sam lite_medsam sam_vit_b] [--repeats 5]
       [--dec-repeats 20] [--threads N]

Reference implementations: Meta's ``segment_anything`` SamPredictor (SAM ViT-B, random weights),
MobileSAM's own SamPredictor (random weights) and the original LiteMedSAM recipe (real weights).
Ours and the reference take turns every repeat after one warm-up each (load from other processes
hits both alike); each number is the median. Decoder = one prompt (mobile_sam / sam_vit_b: a
click, lite_medsam: a box) including post-processing to the original image size, as the
reference predictors do; our decoder time is also split into the model call and the
post-processing (``Prediction.timings_ms``). ``--threads`` sets torch's intra-op threads for both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.host import describe_host  # noqa: E402
from engine.backends.torch_backend import TorchBackend  # noqa: E402
from engine.models.registry import get_spec, load_model  # noqa: E402
from engine.predictor import Predictor  # noqa: E402
from engine.transforms import resize_longest_side  # noqa: E402


def interleaved_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """ms of each run; one warm-up each, then the functions take turns every repeat."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {label: [] for label in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[label].append((time.perf_counter() - t0) * 1e3)
    return times


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


def bench(name: str, rgb: np.ndarray, repeats: int, dec_repeats: int, tmp: Path) -> dict[str, float]:
    spec = get_spec(name)
    point = np.array([[rgb.shape[1] / 2, rgb.shape[0] / 2]], np.float32)
    box = np.array([rgb.shape[1] * 0.25, rgb.shape[0] * 0.25, rgb.shape[1] * 0.75, rgb.shape[0] * 0.75], np.float32)
    if name == "lite_medsam":
        from engine.reference import LiteMedSamRecipe, medsam_checkpoint

        ckpt = medsam_checkpoint()
        ref = LiteMedSamRecipe(ckpt)
        ref_emb = ref.embed(rgb)
        ref_encode: Callable[[], object] = partial(ref.embed, rgb)

        def ref_decode() -> None:  # the recipe's segment() minus its embed(): prompt encoder, decoder, upsampling
            ref.segment_embedding(rgb.shape[:2], box, ref_emb)

        prompt = {"box_xyxy": box}
    else:
        ref, ckpt = _reference(name, tmp)
        resized = torch.from_numpy(resize_longest_side(rgb, 1024)).permute(2, 0, 1)[None].float()

        def ref_encode() -> None:
            with torch.inference_mode():
                ref.set_torch_image(resized, rgb.shape[:2])

        ref_encode()

        def ref_decode() -> None:
            ref.predict(point_coords=point, point_labels=np.ones(1), multimask_output=False)

        prompt = {"points_xy": point}
    ours = Predictor(TorchBackend(load_model(name, ckpt), spec.input_size), spec)
    enc = interleaved_ms({"ours": partial(ours.set_image, rgb), "ref": ref_encode}, repeats)
    if name != "lite_medsam":
        ref_encode()  # leave the reference predictor holding this image
    ours.set_image(rgb)
    parts: dict[str, list[float]] = {"decode_ms": [], "postprocess_ms": []}

    def ours_decode() -> None:
        pred = ours.predict(**prompt)
        for key in parts:
            parts[key].append(pred.timings_ms.get(key, float("nan")))

    dec = interleaved_ms({"ours": ours_decode, "ref": ref_decode}, dec_repeats)
    med = statistics.median
    return {"enc": med(enc["ours"]), "ref_enc": med(enc["ref"]), "dec": med(dec["ours"]), "ref_dec": med(dec["ref"]),
            "dec_model": med(parts["decode_ms"][1:]), "dec_post": med(parts["postprocess_ms"][1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lite_medsam", "mobile_sam", "sam_vit_b"])
    parser.add_argument("--repeats", type=int, default=5, help="encoder runs per implementation (after 1 warm-up)")
    parser.add_argument("--dec-repeats", type=int, default=20, help="decoder runs per implementation")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--image", default=None, help="default: shared truck.jpg, else a random 1200x1800 image")
    args = parser.parse_args()
    import cv2

    from engine.reference import shared_data_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    data = shared_data_dir()
    path = Path(args.image) if args.image else (data / "sam_images" / "truck.jpg" if data else None)
    rgb = (cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) if path
           else np.random.default_rng(0).integers(0, 255, (1200, 1800, 3), dtype=np.uint8))
    tmp = Path(__import__("tempfile").mkdtemp())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(describe_host())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, image {rgb.shape[1]}x{rgb.shape[0]}, "
          f"load avg {load:.1f}; median ms of {args.repeats} (encoder) / {args.dec_repeats} (decoder) runs, "
          "ours and reference interleaved; ratio = ours / reference (targets: encoder <= 1.0, decoder <= 0.5)")
    print("| model | encoder ms | ref ms | ratio | decoder ms (model + post) | ref ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        r = bench(name, rgb, args.repeats, args.dec_repeats, tmp)
        print(f"| {name} | {r['enc']:.1f} | {r['ref_enc']:.1f} | {r['enc'] / r['ref_enc']:.2f} | "
              f"{r['dec']:.1f} ({r['dec_model']:.1f} + {r['dec_post']:.1f}) | {r['ref_dec']:.1f} | "
              f"{r['dec'] / r['ref_dec']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
