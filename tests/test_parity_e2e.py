"""End-to-end parity from the image file to the full-size logits, against the official predictors.

Ours: ``Predictor.set_image(rgb)`` + ``predict`` (torch and ONNX Runtime backends) and ``arsel
segment --logits``, from the same uint8 image the official ``SamPredictor`` gets (segment-anything
for SAM ViT-B, ``mobile_sam`` for MobileSAM), at seeded random weights. No preprocessed tensor is
shared: each side resizes, normalises and pads the image itself.

Images: truck 1800x1200 (landscape, larger than 1024 px) and its 1200x1800 transpose (portrait),
dog 800x534 (smaller, landscape), a 300x200 crop of groceries (portrait, small). Prompts: point,
box, point + box, multimask. Bar: logits max-abs <= 1e-3 x max(1, |ref|max), mask IoU >= 0.999.
MobileSAM takes the broad matrix; ViT-B (~10 s per encode here) a smaller set, marked slow.
Reference encodes are cached per image in module-scoped fixtures.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.backends.factory import create_backend
from engine.backends.torch_backend import TorchBackend
from engine.imageio import load_rgb, save_rgb
from engine.models.registry import get_spec, load_model
from engine.predictor import Predictor
from tests.refs import official_mobile_sam, perturb_

IMAGES: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "truck_1200x1800": lambda truck, dog, groc: truck,
    "truck_portrait_1800x1200": lambda truck, dog, groc: np.ascontiguousarray(truck.transpose(1, 0, 2)),
    "dog_534x800": lambda truck, dog, groc: dog,
    "groceries_crop_300x200": lambda truck, dog, groc: np.ascontiguousarray(groc[100:400, 250:450]),
}

# prompts as fractions of (W, H), so every image gets the same layout
PROMPTS = {
    "point": dict(points=[[0.5, 0.55]], labels=[1], box=None, multimask=False),
    "box": dict(points=None, labels=None, box=[0.2, 0.25, 0.75, 0.8], multimask=False),
    "point_box": dict(points=[[0.35, 0.45]], labels=[0], box=[0.2, 0.25, 0.75, 0.8], multimask=False),
    "multimask": dict(points=[[0.5, 0.55], [0.3, 0.3]], labels=[1, 0], box=None, multimask=True),
}


def assert_parity(ours: np.ndarray, ref: np.ndarray) -> None:
    """Full-size logits ``(M, H, W)``: max-abs within 1e-3 x max(1, |ref|max), masks at IoU >= 0.999."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    tol = 1e-3 * max(1.0, float(np.abs(ref).max()))
    diff = float(np.abs(ours - ref).max())
    assert diff <= tol, f"logits differ by {diff:.3g} > {tol:.3g}"
    for m_ours, m_ref in zip(ours > 0, ref > 0):
        union = np.logical_or(m_ours, m_ref).sum()
        iou = 1.0 if union == 0 else np.logical_and(m_ours, m_ref).sum() / union
        assert iou >= 0.999, f"mask IoU {iou:.5f}"


def prompt_px(name: str, hw: tuple[int, int]) -> dict:
    p, wh = PROMPTS[name], np.array([hw[1], hw[0]], np.float32)
    pts = None if p["points"] is None else np.array(p["points"], np.float32) * wh
    box = None if p["box"] is None else np.array(p["box"], np.float32) * np.tile(wh, 2)
    labels = None if p["labels"] is None else np.array(p["labels"])
    return dict(points=pts, labels=labels, box=box, multimask=p["multimask"])


class Pair:
    """Our predictor and the official ``SamPredictor`` for one model, each image encoded once per side."""

    def __init__(self, spec_name: str, official: torch.nn.Module, ckpt: Path, images: dict[str, np.ndarray],
                 predictor_cls: type) -> None:
        self.spec, self.ckpt, self.images = get_spec(spec_name), ckpt, images
        self.official, self.predictor_cls = official, predictor_cls
        self.backends = {"torch": TorchBackend(load_model(spec_name, ckpt), self.spec.input_size)}
        self._ours: dict[tuple[str, str], Predictor] = {}
        self._ref: dict[str, object] = {}

    def ours(self, image: str, runtime: str) -> Predictor:
        if (image, runtime) not in self._ours:
            p = Predictor(self.backends[runtime], self.spec)
            p.set_image(self.images[image])
            self._ours[(image, runtime)] = p
        return self._ours[(image, runtime)]

    def ref_logits(self, image: str, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """The official full-size logits ``(M, H, W)`` and predicted IoUs ``(M,)``."""
        if image not in self._ref:
            ref = self.predictor_cls(self.official)
            ref.set_image(self.images[image])
            self._ref[image] = ref
        p = prompt_px(prompt, self.images[image].shape[:2])
        logits, scores, _ = self._ref[image].predict(  # type: ignore[attr-defined]
            point_coords=p["points"], point_labels=p["labels"], box=p["box"], multimask_output=p["multimask"],
            return_logits=True)
        return logits, scores

    def check(self, image: str, prompt: str, runtime: str) -> None:
        p = prompt_px(prompt, self.images[image].shape[:2])
        pred = self.ours(image, runtime).predict(p["points"], p["labels"], p["box"], multimask_output=p["multimask"])
        assert_parity(pred.logits[0], self.ref_logits(image, prompt)[0])  # type: ignore[index]


@pytest.fixture(scope="module")
def images(data_dir: Path) -> dict[str, np.ndarray]:
    root = data_dir / "sam_images"
    truck, dog, groc = (load_rgb(root / f"{n}.jpg") for n in ("truck", "dog", "groceries"))
    return {name: make(truck, dog, groc) for name, make in IMAGES.items()}


@pytest.fixture(scope="module")
def mobile(images: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Pair:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam import SamPredictor
    official = official_mobile_sam(seed=11)
    ckpt = tmp_path_factory.mktemp("mobile") / "mobile_sam_random.pt"
    torch.save(official.state_dict(), ckpt)
    return Pair("mobile_sam", official, ckpt, images, SamPredictor)


@pytest.fixture(scope="module")
def vit_b(images: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Pair:
    from segment_anything import SamPredictor, sam_model_registry

    with torch.random.fork_rng():
        torch.manual_seed(12)
        official = perturb_(sam_model_registry["vit_b"](), 12)
    ckpt = tmp_path_factory.mktemp("vitb") / "sam_vit_b_random.pt"
    torch.save(official.state_dict(), ckpt)
    return Pair("sam_vit_b", official, ckpt, images, SamPredictor)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An XDG cache root: exports land in ``<root>/arsel/onnx`` (shared by the API and the CLI)."""
    return tmp_path_factory.mktemp("xdg")


def _with_ort(pair: Pair, cache_root: Path) -> Pair:
    if "onnxruntime" not in pair.backends:
        pair.backends["onnxruntime"] = create_backend("onnxruntime", pair.spec.name, pair.ckpt,
                                                      cache_dir=cache_root / "arsel")
    return pair


@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("image", list(IMAGES))
def test_mobile_sam_torch_matches_official_predictor(mobile: Pair, image: str, prompt: str) -> None:
    mobile.check(image, prompt, "torch")


@pytest.mark.slow
@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("image", list(IMAGES))
def test_mobile_sam_onnxruntime_matches_official_predictor(mobile: Pair, onnx_cache: Path, image: str,
                                                           prompt: str) -> None:
    _with_ort(mobile, onnx_cache).check(image, prompt, "onnxruntime")


@pytest.mark.slow
@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("image", ["truck_1200x1800", "groceries_crop_300x200"])
def test_sam_vit_b_torch_matches_official_predictor(vit_b: Pair, image: str, prompt: str) -> None:
    vit_b.check(image, prompt, "torch")


@pytest.mark.slow
@pytest.mark.parametrize(("image", "prompt", "runtime"), [
    ("truck_portrait_1800x1200", "multimask", "torch"),
    ("truck_1200x1800", "point_box", "onnxruntime"),
])
def test_cli_segment_logits_match_official_predictor(mobile: Pair, onnx_cache: Path, image: str, prompt: str,
                                                     runtime: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``arsel segment IMAGE --logits``: the saved logits are the official best-scoring mask's."""
    from engine.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(onnx_cache))  # the ONNX export the API tests made, if any
    path = tmp_path / "image.png"  # lossless, so the CLI reads the very pixels the reference gets
    save_rgb(path, mobile.images[image])
    p = prompt_px(prompt, mobile.images[image].shape[:2])
    argv = ["segment", str(path), "--model", "mobile_sam", "--checkpoint", str(mobile.ckpt), "--backend", runtime,
            "--out", str(tmp_path / "mask.png"), "--logits", str(tmp_path / "logits.npy")]
    for xy, label in zip(p["points"] if p["points"] is not None else [], p["labels"] if p["labels"] is not None else []):
        argv += ["--point", f"{xy[0]},{xy[1]},{int(label)}"]
    if p["box"] is not None:
        argv += ["--box", ",".join(str(float(v)) for v in p["box"])]
    if p["multimask"]:
        argv.append("--multimask")
    assert main(argv) == 0
    ref, ref_scores = mobile.ref_logits(image, prompt)
    best = int(np.argmax(ref_scores))
    assert_parity(np.load(tmp_path / "logits.npy")[None], ref[best : best + 1])
