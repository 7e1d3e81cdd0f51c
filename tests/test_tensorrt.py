"""TensorRT: engine cache keys and sidecars (CPU, no tensorrt needed) and, where a GPU and
``tensorrt`` are present, LiteMedSAM engines compared with ONNX Runtime.

The GPU tests skip with the reason (tensorrt not importable / no CUDA GPU) elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from trt.build import (
    DecoderProfile,
    EngineKey,
    EngineMismatchError,
    calibration_images,
    check_engine_compatible,
    engine_status,
    import_tensorrt,
    write_sidecar,
)
from trt.runtime import check_engine_io, expected_io

KEY = EngineKey("ab" * 32, "10.3.0", "NVIDIA H100 80GB HBM3", "fp16", DecoderProfile().tag)


def _engine(tmp_path: Path, key: EngineKey = KEY) -> Path:
    path = tmp_path / key.file_name("lite_medsam_decoder")
    path.write_bytes(b"plan")
    write_sidecar(path, key, tmp_path / "lite_medsam_decoder.onnx", build_s=1.0)
    return path


def test_engine_file_name_holds_every_key_part() -> None:
    name = KEY.file_name("lite_medsam_decoder")
    assert name == "lite_medsam_decoder_fp16_abababababab_trt10.3.0_nvidia-h100-80gb-hbm3_b1-1-16_n1-2-16.engine"
    assert EngineKey("cd" * 32, "10.3.0", "RTX 4090", "fp32").file_name("enc").endswith("_rtx-4090.engine")


def test_sidecar_round_trip_is_ok(tmp_path: Path) -> None:
    path = _engine(tmp_path)
    assert engine_status(path, KEY) == ("ok", "")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["trt_version"] == "10.3.0" and meta["onnx_sha256"] == KEY.onnx_sha256


@pytest.mark.parametrize(
    "change,status,words",
    [
        ({"onnx_sha256": "ef" * 32}, "stale", ["onnx_sha256"]),
        ({"precision": "fp32"}, "stale", ["precision"]),
        ({"profile": DecoderProfile(max_points=32).tag}, "stale", ["profile"]),
        ({"trt_version": "10.8.0"}, "foreign", ["TensorRT '10.3.0'", "installed: '10.8.0'"]),
        ({"gpu": "NVIDIA L4"}, "foreign", ["GPU 'NVIDIA H100 80GB HBM3'", "installed: 'NVIDIA L4'"]),
    ],
)
def test_stale_and_foreign_engines(tmp_path: Path, change: dict, status: str, words: list[str]) -> None:
    from dataclasses import replace

    path = _engine(tmp_path)
    got, reason = engine_status(path, replace(KEY, **change))
    assert got == status
    for word in words:
        assert word in reason


def test_missing_engine_and_missing_sidecar(tmp_path: Path) -> None:
    assert engine_status(tmp_path / "none.engine", KEY)[0] == "missing"
    path = _engine(tmp_path)
    path.with_suffix(".json").unlink()
    assert engine_status(path, KEY)[0] == "stale"


def test_foreign_engine_refusal_names_both_versions_and_gpus(tmp_path: Path) -> None:
    path = _engine(tmp_path)
    check_engine_compatible(path, "10.3.0", "NVIDIA H100 80GB HBM3")  # same: no error
    with pytest.raises(EngineMismatchError) as info:
        check_engine_compatible(path, "10.8.0", "NVIDIA L4")
    message = str(info.value)
    for word in ("TensorRT 10.3.0", "installed: TensorRT 10.8.0", "NVIDIA H100 80GB HBM3", "NVIDIA L4", "build-engine"):
        assert word in message


@pytest.mark.parametrize(
    "kwargs,exception",
    [({}, None), ({"max_points": 64, "max_batch": 4, "opt_batch": 2}, None),
     ({"min_points": 0}, ValueError), ({"opt_points": 32}, ValueError), ({"opt_batch": 2, "max_batch": 1}, ValueError)],
)
def test_decoder_profile(kwargs: dict, exception: type[Exception] | None) -> None:
    if exception:
        with pytest.raises(exception):
            DecoderProfile(**kwargs)
        return
    profile = DecoderProfile(**kwargs)
    assert profile.shapes("max")["point_coords"] == (profile.max_batch, profile.max_points, 2)
    assert profile.shapes("min")["image_embeddings"] == (1, 256, 64, 64)


def _io(kind: str, size: int, **override: tuple) -> dict:
    io = {name: (is_in, "float32", shape) for name, (is_in, shape) in expected_io(kind, size).items()}
    io.update(override)
    return io


@pytest.mark.parametrize(
    "kind,io,problem",
    [
        ("encoder", _io("encoder", 256), None),
        ("decoder", _io("decoder", 256), None),
        ("encoder", _io("encoder", 1024), "expected (1, 3, 256, 256)"),
        ("decoder", _io("decoder", 256, low_res_masks=(False, "float16", (-1, 4, 256, 256))), "float16"),
        ("decoder", _io("decoder", 256, point_coords=(True, "float32", (1, -1, 2))), "point_coords has shape"),
        ("decoder", {**_io("decoder", 256), "orig_im_size": (True, "float32", (2,))}, "orig_im_size"),
    ],
)
def test_engine_io_check(kind: str, io: dict, problem: str | None) -> None:
    problems = check_engine_io(io, kind, 256)
    assert (problems == []) if problem is None else any(problem in p for p in problems), problems


def test_calibration_images(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no calibration images"):
        calibration_images(tmp_path)
    (tmp_path / "b.PNG").write_bytes(b"")
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    assert [p.name for p in calibration_images(tmp_path)] == ["a.jpg", "b.PNG"]


def test_missing_tensorrt_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ImportError, match=r"pip install 'arsel\[trt\]'"):
        import_tensorrt()


# --- GPU: build and run the LiteMedSAM engines ---------------------------------------------
def _require_tensorrt() -> None:
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("tensorrt is not importable: pip install arsel[trt] on a machine with an NVIDIA GPU")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")


@pytest.fixture(scope="module")
def medsam_engines(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    _require_tensorrt()
    from engine.backends.ort_backend import OrtBackend
    from engine.export.onnx_export import export_model
    from tests.refs import medsam_checkpoint
    from trt.build import build_engine

    out = tmp_path_factory.mktemp("trt")
    result = export_model("lite_medsam", out, medsam_checkpoint(), progress=False)
    ort_backend = OrtBackend(result.encoder_path, result.decoder_path, 256)
    engines = {p: (build_engine(result.encoder_path, out, p), build_engine(result.decoder_path, out, p))
               for p in ("fp32", "fp16")}
    return ort_backend, engines


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision,logit_tol,min_iou", [("fp32", 2e-2, 0.999), ("fp16", 0.5, 0.98)])
def test_trt_matches_onnxruntime(medsam_engines, precision: str, logit_tol: float, min_iou: float) -> None:  # noqa: ANN001
    from engine.export.prompts import realistic_prompts
    from trt.runtime import TrtBackend

    ort_backend, engines = medsam_engines
    backend = TrtBackend(*engines[precision], 256)
    assert backend.describe().precision == precision
    rng = np.random.default_rng(0)
    x = rng.random((1, 3, 256, 256), dtype=np.float32)
    emb, ref_emb = backend.encode(x), ort_backend.encode(x)
    assert np.abs(emb.cpu().numpy() - ref_emb).max() <= logit_tol
    for batch, points in ((1, 1), (1, 5), (4, 16)):
        prompts = realistic_prompts(batch, points, 256, seed=points)
        _, low = backend.decode(emb, **prompts)
        _, ref_low = ort_backend.decode(ref_emb, **prompts)
        assert np.abs(low - ref_low).max() <= logit_tol * 10
        inter = ((low > 0) & (ref_low > 0)).sum()
        union = max(((low > 0) | (ref_low > 0)).sum(), 1)
        assert inter / union >= min_iou


@pytest.mark.tensorrt
def test_cached_engine_is_reused(medsam_engines, tmp_path: Path) -> None:  # noqa: ANN001
    from trt.build import build_engine

    _, engines = medsam_engines
    enc, _ = engines["fp32"]
    onnx_path = Path(json.loads(enc.with_suffix(".json").read_text())["onnx"])
    before = enc.stat().st_mtime_ns
    assert build_engine(onnx_path, enc.parent, "fp32") == enc
    assert enc.stat().st_mtime_ns == before


# --- build_engine's cache flow on a fake tensorrt module (CPU) ----------------------------------
class _FakeTensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: str = "f32") -> None:
        self.name, self.shape, self.dtype = name, shape, dtype


class _FakeLayer:
    def __init__(self, kind: str) -> None:
        self.type, self.precision, self.num_outputs, self.out_types = kind, None, 1, {}

    def get_output(self, i: int) -> _FakeTensor:
        return _FakeTensor("out", (1,))

    def set_output_type(self, i: int, dtype: str) -> None:
        self.out_types[i] = dtype


def _fake_tensorrt(version: str = "10.3.0") -> tuple[object, dict]:
    from types import SimpleNamespace as NS

    log: dict = {"builds": 0, "flags": set(), "profiles": {}, "layers": []}

    def network_for(path: str) -> NS:
        import onnx

        graph = onnx.load(path).graph
        dyn = lambda vi: tuple(d.dim_value or -1 for d in vi.type.tensor_type.shape.dim)  # noqa: E731
        inputs = [_FakeTensor(vi.name, dyn(vi)) for vi in graph.input]
        layers = [_FakeLayer("NORMALIZATION"), _FakeLayer("MATMUL")]
        log["layers"] = layers
        return NS(num_inputs=len(inputs), get_input=inputs.__getitem__, num_layers=2, get_layer=layers.__getitem__)

    class Parser:
        def __init__(self, network: NS, logger: object) -> None:
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path: str) -> bool:
            self.network.__dict__.update(network_for(path).__dict__)
            return True

    profile = NS(set_shape=lambda name, lo, opt, hi: log["profiles"].__setitem__(name, (lo, opt, hi)))
    config = NS(set_memory_pool_limit=lambda *a: None, create_timing_cache=lambda b: b,
                set_timing_cache=lambda *a: None,
                get_timing_cache=lambda: NS(serialize=lambda: b"timing"), add_optimization_profile=lambda p: None,
                set_flag=log["flags"].add)

    def build(network: NS, cfg: NS) -> bytes:
        log["builds"] += 1
        return b"plan"

    builder = NS(create_network=lambda flags: NS(), create_builder_config=lambda: config,
                 create_optimization_profile=lambda: profile, build_serialized_network=build)
    trt = NS(__version__=version, Logger=NS(WARNING=2), Builder=lambda logger: builder, OnnxParser=Parser,
             MemoryPoolType=NS(WORKSPACE=0),
             BuilderFlag=NS(FP16="FP16", INT8="INT8", OBEY_PRECISION_CONSTRAINTS="OBEY"),
             LayerType=NS(NORMALIZATION="NORMALIZATION", SOFTMAX="SOFTMAX", REDUCE="REDUCE", ELEMENTWISE="EW",
                          UNARY="UNARY"), float32="f32", float16="f16")
    trt.Logger = lambda level: None  # type: ignore[attr-defined]
    trt.Logger.WARNING = 2  # type: ignore[attr-defined]
    return trt, log


def _decoder_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    from trt.runtime import expected_io

    io = expected_io("decoder", 256)
    vis = {n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [d if d > 0 else "B" for d in shape])
           for n, (_, shape) in io.items()}
    nodes = [helper.make_node("Identity", ["point_labels"], ["iou_predictions"]),
             helper.make_node("Identity", ["mask_input"], ["low_res_masks"])]
    ins = [vis[n] for n in ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")]
    graph = helper.make_graph(nodes, "dec", ins, [vis["iou_predictions"], vis["low_res_masks"]])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_build_engine_cache_flow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trt.build as build

    fake, log = _fake_tensorrt()
    monkeypatch.setattr(build, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(build, "gpu_name", lambda device=0: "NVIDIA H100 80GB HBM3")
    onnx_path = _decoder_onnx(tmp_path / "lite_medsam_decoder.onnx")
    first = build.build_engine(onnx_path, tmp_path / "engines", "fp16")
    assert log["builds"] == 1 and {"FP16", "OBEY"} <= log["flags"]
    assert log["layers"][0].precision == "f32" and log["layers"][1].precision is None  # LayerNorm kept fp32
    assert "image_embeddings" not in log["profiles"]  # static input: no profile entry
    assert log["profiles"]["point_coords"] == ((1, 1, 2), (1, 2, 2), (16, 16, 2))
    assert build.build_engine(onnx_path, tmp_path / "engines", "fp16") == first and log["builds"] == 1  # reused
    meta = json.loads(first.with_suffix(".json").read_text())
    first.with_suffix(".json").write_text(json.dumps({**meta, "gpu": "NVIDIA L4"}))  # a foreign engine
    with pytest.raises(EngineMismatchError, match="NVIDIA L4"):
        build.build_engine(onnx_path, tmp_path / "engines", "fp16", on_mismatch="error")
    assert build.build_engine(onnx_path, tmp_path / "engines", "fp16") == first and log["builds"] == 2  # rebuilt
    import onnx

    model = onnx.load(str(onnx_path))
    model.doc_string = "re-exported"
    onnx.save(model, str(onnx_path))  # edited ONNX: new hash, new engine
    assert build.build_engine(onnx_path, tmp_path / "engines", "fp16") != first and log["builds"] == 3
    with pytest.raises(ValueError, match="int8 needs the encoder"):
        build.build_engine(onnx_path, tmp_path / "engines", "int8", calib_dir=tmp_path)
