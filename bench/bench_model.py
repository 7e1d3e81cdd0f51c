"""Encoder and decoder latency per model, ours beside the reference implementation, same run.

Usage: python bench/bench_model.py [--short] [--models mobile_sam lite_medsam sam_vit_b]
       [--repeats 5] [--dec-repeats 20] [--threads N] [--image FILE] [--out FILE.json]

Modes: full (default: three models, 5 encoder / 20 decoder runs); ``--short`` (lite_medsam and
mobile_sam, 2 / 6 runs: a smoke run of a few minutes). Writes ``bench/results/bench_model-*.json``
(``bench/make_docs.py`` renders it) and prints where.

Reference implementations: Meta's ``segment_anything`` SamPredictor (SAM ViT-B, random weights),
MobileSAM's own SamPredictor (random weights) and the original LiteMedSAM recipe (real weights).
Ours and the reference take turns every repeat after one warm-up each. Decoder = one prompt
(mobile_sam / sam_vit_b: a click, lite_medsam: a box) including post-processing to the original
image size, as the reference predictors do. Our decoder caches its image-side work per embedding
and the reference has no such cache, so the decode is timed twice: *cold* (the first prompt on an
embedding not seen before, what a new keyframe costs) and *warm* (the same embedding again);
ratios to the reference use the cold figure. ``--threads`` sets torch's intra-op threads for both.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Run, add_mode_args, describe_host, interleaved_ms, ratio, spread  # noqa: E402
from engine.backends.torch_backend import TorchBackend  # noqa: E402
from engine.models.registry import get_spec, load_model  # noqa: E402
from engine.predictor import Predictor  # noqa: E402
from engine.transforms import resize_longest_side  # noqa: E402
from engine.types import Embedding  # noqa: E402


def fresh_embeddings(emb: Embedding, n: int) -> list[Embedding]:
    """``n`` copies of ``emb`` whose features differ by a few ulp-scale steps, so each is a cache miss."""
    return [Embedding(emb.features + (k + 1) * 1e-6, emb.original_hw, emb.input_hw, emb.frame_index) for k in range(n)]


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


def bench(name: str, rgb: np.ndarray, repeats: int, dec_repeats: int, tmp: Path) -> dict[str, dict[str, list[float]]]:
    """ms samples ``{"ours"|"ref": {"encode", "decode_cold", "decode_warm", ...}}`` for one model."""
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
    emb = ours.set_image(rgb)
    parts: dict[str, list[float]] = {"decode_ms": [], "postprocess_ms": []}

    def ours_warm() -> None:
        pred = ours.predict(**prompt)
        for key in parts:
            parts[key].append(pred.timings_ms.get(key, float("nan")))

    fresh = iter(fresh_embeddings(emb, dec_repeats + 1))

    def ours_cold() -> None:  # a new embedding every call: the image-side cache misses
        ours.set_embedding(next(fresh))
        ours.predict(**prompt)

    cold = interleaved_ms({"ours": ours_cold, "ref": ref_decode}, dec_repeats)
    ours.set_embedding(emb)
    warm = interleaved_ms({"ours": ours_warm, "ref": ref_decode}, dec_repeats)
    return {"ours": {"encode": enc["ours"], "decode_cold": cold["ours"], "decode_warm": warm["ours"],
                     "decode_warm_model": parts["decode_ms"][1:], "decode_warm_post": parts["postprocess_ms"][1:]},
            "ref": {"encode": enc["ref"], "decode_cold": cold["ref"], "decode_warm": warm["ref"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None,
                        help="default: lite_medsam mobile_sam sam_vit_b (--short: lite_medsam mobile_sam)")
    parser.add_argument("--repeats", type=int, default=None, help="encoder runs per implementation after 1 warm-up (5; short 2)")
    parser.add_argument("--dec-repeats", type=int, default=None, help="decoder runs per implementation (20; short 6)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--image", default=None, help="default: shared truck.jpg, else a random 1200x1800 image")
    add_mode_args(parser, "lite_medsam and mobile_sam, 2 encoder / 6 decoder runs")
    args = parser.parse_args()
    models = args.models or (["lite_medsam", "mobile_sam"] if args.short else ["lite_medsam", "mobile_sam", "sam_vit_b"])
    repeats = args.repeats or (2 if args.short else 5)
    dec_repeats = args.dec_repeats or (6 if args.short else 20)
    import cv2

    from engine.reference import shared_data_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    data = shared_data_dir()
    path = Path(args.image) if args.image else (data / "sam_images" / "truck.jpg" if data else None)
    rgb = (cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) if path
           else np.random.default_rng(0).integers(0, 255, (1200, 1800, 3), dtype=np.uint8))
    run = Run("bench_model", {"mode": "short" if args.short else "full", "models": models, "repeats": repeats,
                              "dec_repeats": dec_repeats, "torch_threads": torch.get_num_threads(),
                              "image": path.name if path else "random 1800x1200", "image_wh": [rgb.shape[1], rgb.shape[0]]},
              notes=["decode = one prompt incl. upsampling to the image size; cold = first prompt on a new "
                     "embedding (our image-side cache misses), warm = repeated prompts; x_ref ratios use cold"])
    print(describe_host(run.host))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, image {rgb.shape[1]}x{rgb.shape[0]}; "
          f"median ms of {repeats} (encoder) / {dec_repeats} (decoder) runs, ours and reference interleaved; "
          "ratio = ours / reference, decoder ratio from the cold decode")
    print("| model | encoder ms | ref ms | ratio | decoder cold ms | warm ms | ref ms | ratio (cold) |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            r = bench(name, rgb, repeats, dec_repeats, Path(tmp))
            ours = {k: spread(v) for k, v in r["ours"].items()}
            ref = {k: spread(v) for k, v in r["ref"].items()}
            run.add({"model": name, "impl": "reference"},
                    {"encode_ms": ref["encode"], "decode_cold_ms": ref["decode_cold"], "decode_warm_ms": ref["decode_warm"]})
            run.add({"model": name, "impl": "ours (torch)"},
                    {"encode_ms": ours["encode"], "decode_cold_ms": ours["decode_cold"], "decode_warm_ms": ours["decode_warm"],
                     "encode_x_ref": ratio(ours["encode"], ref["encode"]),
                     "decode_cold_x_ref": ratio(ours["decode_cold"], ref["decode_cold"]),
                     "decode_warm_model_ms": ours["decode_warm_model"], "decode_warm_post_ms": ours["decode_warm_post"]})
            print(f"| {name} | {ours['encode']['median']:.1f} | {ref['encode']['median']:.1f} | "
                  f"{ratio(ours['encode'], ref['encode']):.2f} | {ours['decode_cold']['median']:.1f} | "
                  f"{ours['decode_warm']['median']:.1f} | {ref['decode_cold']['median']:.1f} | "
                  f"{ratio(ours['decode_cold'], ref['decode_cold']):.2f} |", flush=True)
    run.write(args.out)


if __name__ == "__main__":
    main()
