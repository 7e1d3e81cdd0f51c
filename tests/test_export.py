"""ONNX export: graph contract, torch vs ONNX Runtime parity, OrtBackend and the backend factory.

* Decoder parity for every registered architecture at seeded random weights (the decoder does not
  depend on the encoder, so a stub encoder keeps ViT-L/H cheap), 1/2/5/16 points and B = 4.
* Encoder parity for mobile_sam, lite_medsam (BatchNorm statistics randomised) and ViT-B (~70 s,
  marked slow) at random weights.
* LiteMedSAM at the real weights through ``export_model`` (checker + parity inside), and the
  predictor over ``OrtBackend`` vs ``TorchBackend`` on the real truck image.

Tolerance: fp32 logits/embeddings max-abs <= 1e-3 (the contract of ``export_model``); thresholded
masks must agree wherever the torch logit is farther than that from the threshold.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from engine.backends.ort_backend import OrtBackend
from engine.backends.torch_backend import TorchBackend
from engine.contract import DECODER_INPUTS, DECODER_OUTPUTS
from engine.export.common import FP32_TOLERANCE, ExportError
from engine.export.onnx_export import compare_decoder, export_decoder, export_encoder
from engine.export.prompts import realistic_prompts
from engine.models.registry import REGISTRY, build_model, get_spec, load_model
from engine.models.sam import SamModel
from engine.predictor import Predictor
from tests.refs import medsam_checkpoint, perturb_

PROMPT_SHAPES = [(1, 1), (1, 2), (1, 5), (1, 16), (4, 5), (4, 16)]  # (B, N)


class _StubEncoder(nn.Module):
    """Stands in for the image encoder where only the decoder is exported."""

    output_size = (64, 64)  # every registered encoder's embedding grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _decoder_only(name: str, seed: int = 0) -> SamModel:
    spec = dataclasses.replace(get_spec(name), encoder=_StubEncoder)
    torch.manual_seed(seed)
    return perturb_(build_model(spec), seed)


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def _assert_masks_agree(onnx_logits: np.ndarray, torch_logits: np.ndarray) -> None:
    differ = (onnx_logits > 0) != (torch_logits > 0)
    assert not np.any(differ & (np.abs(torch_logits) > FP32_TOLERANCE)), int(differ.sum())


@pytest.fixture(scope="module")
def decoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[SamModel, Path]]:
    """Every registered architecture's decoder at random weights, exported once."""
    out = tmp_path_factory.mktemp("decoders")
    result = {}
    for i, name in enumerate(REGISTRY):
        model = _decoder_only(name, seed=i)
        result[name] = (model, export_decoder(model, out / f"{name}_decoder.onnx"))
    return result


@pytest.mark.parametrize("name", list(REGISTRY))
@pytest.mark.parametrize("batch,points", PROMPT_SHAPES)
def test_decoder_parity_random_weights(decoders, name: str, batch: int, points: int) -> None:  # noqa: ANN001
    model, path = decoders[name]
    side = get_spec(name).input_size
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(points)).numpy()
    prompts = realistic_prompts(batch, points, side, seed=batch * 100 + points)
    iou, low = _run(path, {"image_embeddings": emb, **prompts})
    with torch.inference_mode():
        ref_iou, ref_low = (t.numpy() for t in model(*(torch.from_numpy(x) for x in (emb, *prompts.values()))))
    assert iou.shape == (batch, 4) and low.shape == (batch, 4, 256, 256)
    assert np.abs(iou - ref_iou).max() <= FP32_TOLERANCE
    assert np.abs(low - ref_low).max() <= FP32_TOLERANCE
    _assert_masks_agree(low, ref_low)


def _dims(value_info: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_decoder_graph_contract(decoders) -> None:  # noqa: ANN001
    graph = onnx.load(str(decoders["lite_medsam"][1])).graph
    assert [i.name for i in graph.input] == list(DECODER_INPUTS)
    assert [o.name for o in graph.output] == list(DECODER_OUTPUTS)
    for vi in (*graph.input, *graph.output):
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, vi.name
    dims = {vi.name: _dims(vi) for vi in (*graph.input, *graph.output)}
    assert dims == {
        "image_embeddings": [1, 256, 64, 64],
        "point_coords": ["B", "N", 2],
        "point_labels": ["B", "N"],
        "mask_input": ["B", 1, 256, 256],
        "has_mask_input": ["B"],
        "iou_predictions": ["B", 4],
        "low_res_masks": ["B", 4, 256, 256],
    }


def test_compare_decoder_rejects_a_wrong_graph(decoders) -> None:  # noqa: ANN001
    _, path = decoders["mobile_sam"]
    other = _decoder_only("mobile_sam", seed=99)
    emb = np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32)
    with pytest.raises(ExportError, match="differs from torch"):
        compare_decoder(other, path, emb, realistic_prompts(1, 3, 1024))


@pytest.mark.parametrize(
    "name", ["lite_medsam", "mobile_sam", pytest.param("sam_vit_b", marks=pytest.mark.slow)]
)
def test_encoder_parity_random_weights(name: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = perturb_(build_model(name), seed=1)
    spec = get_spec(name)
    path = export_encoder(model, spec, tmp_path / f"{name}_encoder.onnx")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["image_embeddings"]
    assert _dims(graph.input[0]) == [1, 3, spec.input_size, spec.input_size]
    assert _dims(graph.output[0]) == [1, 256, 64, 64]  # all fixed: no dim_param anywhere
    x = torch.randn(1, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(2)).numpy()
    (out,) = _run(path, {"image": x})
    with torch.inference_mode():
        ref = model.encode(torch.from_numpy(x)).numpy()
    assert np.abs(out - ref).max() <= FP32_TOLERANCE


# --- LiteMedSAM at the real weights ------------------------------------------------------------
@pytest.fixture(scope="module")
def medsam_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, cache dir) with LiteMedSAM exported through the backend factory's cache."""
    from engine.backends.factory import onnx_files

    ckpt = medsam_checkpoint()
    cache = tmp_path_factory.mktemp("arsel_cache")
    onnx_files("lite_medsam", ckpt, cache)
    return ckpt, cache


def _export_json(cache: Path) -> dict:
    (path,) = cache.glob("onnx/lite_medsam-*/lite_medsam_export.json")
    return json.loads(path.read_text())


def test_export_model_reports_parity(medsam_export) -> None:  # noqa: ANN001
    from engine.weights import sha256_file

    ckpt, cache = medsam_export
    report = _export_json(cache)
    assert report["encoder_max_abs_diff"] <= FP32_TOLERANCE
    assert report["decoder_max_abs_diff"] <= FP32_TOLERANCE
    assert report["model_sha256"] == sha256_file(ckpt)
    from engine.backends.factory import EXPORT_FORMAT

    assert Path(report["decoder_path"]).parent.name == f"lite_medsam-{report['model_sha256'][:16]}-v{EXPORT_FORMAT}"


@pytest.fixture(scope="module")
def medsam_backends(medsam_export) -> tuple[OrtBackend, TorchBackend]:  # noqa: ANN001
    from engine.backends.factory import create_backend

    ckpt, cache = medsam_export
    ort_backend = create_backend("onnxruntime", "lite_medsam", ckpt, cache_dir=cache)
    assert isinstance(ort_backend, OrtBackend)
    return ort_backend, TorchBackend(load_model("lite_medsam", ckpt), 256)


@pytest.fixture(scope="module")
def medsam_embeddings(medsam_backends) -> tuple[np.ndarray, torch.Tensor]:  # noqa: ANN001
    """(ONNX Runtime, torch) embeddings of one smooth synthetic image at the real weights."""
    ort_backend, torch_backend = medsam_backends
    rng = np.random.default_rng(5)
    x = cv2.GaussianBlur(rng.random((256, 256, 3), dtype=np.float32), (0, 0), 8).transpose(2, 0, 1)[None]
    x = np.ascontiguousarray((x - x.min()) / (x.max() - x.min()))
    return ort_backend.encode(x), torch_backend.encode(x)


def test_lite_medsam_real_weights_encoder_parity(medsam_embeddings) -> None:  # noqa: ANN001
    emb, ref_emb = medsam_embeddings
    assert emb.shape == (1, 256, 64, 64) and emb.dtype == np.float32
    assert np.abs(emb - ref_emb.numpy()).max() <= FP32_TOLERANCE


@pytest.mark.parametrize("batch,points", PROMPT_SHAPES)
def test_lite_medsam_real_weights_decoder_parity(medsam_backends, medsam_embeddings, batch: int, points: int) -> None:  # noqa: ANN001
    ort_backend, torch_backend = medsam_backends
    emb, ref_emb = medsam_embeddings
    prompts = realistic_prompts(batch, points, 256, seed=points)
    iou, low = ort_backend.decode(emb, **prompts)
    ref_iou, ref_low = torch_backend.decode(ref_emb, **prompts)
    assert np.abs(iou - ref_iou).max() <= FP32_TOLERANCE
    assert np.abs(low - ref_low).max() <= FP32_TOLERANCE
    _assert_masks_agree(low, ref_low)


def test_predictor_over_ort_matches_torch_on_truck(medsam_backends, data_dir: Path) -> None:  # noqa: ANN001
    ort_backend, torch_backend = medsam_backends
    rgb = cv2.cvtColor(cv2.imread(str(data_dir / "sam_images" / "truck.jpg")), cv2.COLOR_BGR2RGB)
    spec = get_spec("lite_medsam")
    ours, ref = Predictor(ort_backend, spec), Predictor(torch_backend, spec)
    ours.set_image(rgb)
    ref.set_image(rgb)
    boxes = np.array([[425, 600, 700, 875], [75, 275, 1725, 850], [1375, 550, 1650, 800]], np.float32)
    for multimask in (False, True):
        got = ours.predict(box_xyxy=boxes, multimask_output=multimask)
        want = ref.predict(box_xyxy=boxes, multimask_output=multimask)
        assert np.abs(got.low_res_logits - want.low_res_logits).max() <= FP32_TOLERANCE
        assert np.abs(got.scores - want.scores).max() <= FP32_TOLERANCE
        # Pixels whose |logit| is within float rounding of 0 (a handful of 6.5M here) may fall either
        # side of the threshold; every other pixel must agree.
        _assert_masks_agree(got.logits, want.logits)
        differ = got.masks != want.masks
        assert differ.sum() <= 1e-5 * differ.size, int(differ.sum())
    assert ours.backend.describe().runtime == "onnxruntime"


def test_factory_reuses_the_cached_export(medsam_export, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import engine.export.onnx_export as onnx_export
    from engine.backends.factory import create_backend

    ckpt, cache = medsam_export
    monkeypatch.setattr(onnx_export, "export_model", lambda *a, **k: pytest.fail("re-exported a cached model"))
    assert create_backend("onnxruntime", "lite_medsam", ckpt, cache_dir=cache).describe().precision == "fp32"


@pytest.mark.parametrize(
    "trt_found,gpu,onnxruntime_found,device,expected",
    [
        (True, True, True, "cuda", "tensorrt"),
        (True, True, True, "cpu", "onnxruntime"),
        (True, False, True, "cuda", "onnxruntime"),
        (False, True, True, "cuda", "torch"),  # a GPU without TensorRT: torch on CUDA, not a CPU ORT
        (False, False, False, "cpu", "torch"),
    ],
)
def test_auto_backend_choice(monkeypatch: pytest.MonkeyPatch, trt_found: bool, gpu: bool,  # noqa: PLR0913
                             onnxruntime_found: bool, device: str, expected: str) -> None:
    from engine.backends import factory

    found = {"tensorrt": trt_found, "onnxruntime": onnxruntime_found}
    monkeypatch.setattr(factory.importlib.util, "find_spec", lambda name: object() if found.get(name) else None)
    monkeypatch.setattr(factory, "_gpu_present", lambda: gpu)
    assert factory.resolve_auto(device) == expected


@pytest.mark.parametrize(
    "name,exception",
    [("torch", None), ("openvino", ValueError), ("tensorrt", ValueError)],
)
def test_create_backend_names(medsam_export, name: str, exception: type[Exception] | None) -> None:  # noqa: ANN001
    from engine.backends.factory import create_backend

    ckpt, cache = medsam_export
    if exception is None:
        assert create_backend(name, "lite_medsam", ckpt, cache_dir=cache).describe().runtime == name
    else:
        with pytest.raises(exception):
            create_backend(name, "lite_medsam", ckpt, device="cpu", cache_dir=cache)


def test_tensorrt_on_cpu_fails_before_the_export(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.backends import factory

    monkeypatch.setattr(factory, "onnx_files", lambda *a, **k: pytest.fail("exported before checking the device"))
    with pytest.raises(ValueError, match=r"CUDA device, got device='cpu'; pass --device cuda \(CLI\) or device='cuda'"):
        factory.create_backend("tensorrt", "lite_medsam", device="cpu")


def test_export_cli_parsers() -> None:
    import argparse

    from engine.export.cli import add_export_parser
    from trt.cli import add_build_engine_parser

    parser = argparse.ArgumentParser(prog="arsel")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_parser(sub)
    add_build_engine_parser(sub)
    args = parser.parse_args(["export", "lite_medsam", "--out", "x", "--opset", "18", "--fp16"])
    assert (args.model, args.out, args.opset, args.fp16, args.checkpoint) == ("lite_medsam", "x", 18, True, None)
    args = parser.parse_args(["build-engine", "mobile_sam", "--int8", "calib", "--out", "e"])
    assert (args.model, args.int8, args.fp16, args.out) == ("mobile_sam", "calib", False, "e")
