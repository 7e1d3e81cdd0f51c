"""``arsel export MODEL --triton-repo DIR``: the Triton repository's configs against its ONNX graphs.

LiteMedSAM at its real weights, exported once through the CLI (the batched encoder is checked
against torch one image at a time inside the export). Every ``config.pbtxt`` must parse as
Triton's ``ModelConfig`` (``tritonclient.grpc.model_config_pb2``), and its names, data types and
dims must match the ONNX graph beside it, dynamic axes included. No Triton server runs here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from engine.cli import main
from tests.refs import medsam_checkpoint

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed (pip install -e '.[test]')"
)
from google.protobuf import text_format  # noqa: E402 - tritonclient brings protobuf

_ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                   onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("triton") / "repo"
    ckpt = medsam_checkpoint()
    assert main(["export", "lite_medsam", "--checkpoint", str(ckpt), "--triton-repo", str(path),
                 "--triton-max-batch", "4"]) == 0
    return path


def _config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _graph_io(path: Path) -> dict[str, tuple[str, list[int | str]]]:
    """name -> (Triton data type, dims with ``dim_param`` names for dynamic axes) of every graph input/output."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        vi.name: (_ONNX_TO_TRITON[vi.type.tensor_type.elem_type],
                  [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim])
        for vi in (*graph.input, *graph.output)
    }


def _config_io(cfg: model_config_pb2.ModelConfig) -> dict[str, tuple[str, list[int]]]:
    return {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in (*cfg.input, *cfg.output)}


def _expected_config_dims(graph_dims: list[int | str], batched: bool) -> list[int]:
    """What Triton must be told for a graph shape: dynamic axes as -1, the batch axis left out if batched."""
    if batched:
        assert isinstance(graph_dims[0], str), f"batched model's first axis must be dynamic, got {graph_dims}"
        graph_dims = graph_dims[1:]
    return [-1 if isinstance(d, str) else d for d in graph_dims]


@pytest.mark.slow  # the module's export takes ~1-4 min on 2 loaded cores
def test_repository_layout(repo: Path) -> None:
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()) == [
        "decoder/1/model.onnx", "decoder/config.pbtxt", "encoder/1/model.onnx", "encoder/config.pbtxt",
        "triton_export.json",
    ]
    report = json.loads((repo / "triton_export.json").read_text())
    assert report["encoder_max_abs_diff"] <= 1e-3 and report["decoder_max_abs_diff"] <= 1e-3
    assert len(report["model_sha256"]) == 64


@pytest.mark.slow
@pytest.mark.parametrize("model", ["encoder", "decoder"])
def test_config_matches_its_onnx_graph(repo: Path, model: str) -> None:
    cfg = _config(repo / model / "config.pbtxt")
    graph = _graph_io(repo / model / "1" / "model.onnx")
    assert cfg.name == model and cfg.platform == "onnxruntime_onnx"
    batched = cfg.max_batch_size > 0
    assert _config_io(cfg) == {n: (t, _expected_config_dims(d, batched)) for n, (t, d) in graph.items()}
    assert [t.name for t in cfg.input] == [i.name for i in onnx.load(str(repo / model / "1" / "model.onnx")).graph.input]


@pytest.mark.slow
def test_encoder_config_batches_dynamically(repo: Path) -> None:
    cfg = _config(repo / "encoder" / "config.pbtxt")
    assert cfg.max_batch_size == 4
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group] == [
        (1, "KIND_GPU")]
    dims = _graph_io(repo / "encoder" / "1" / "model.onnx")
    assert dims["image"] == ("TYPE_FP32", ["batch", 3, 256, 256])
    assert dims["image_embeddings"] == ("TYPE_FP32", ["batch", 256, 64, 64])


@pytest.mark.slow
def test_decoder_config_declares_dynamic_prompts_and_points(repo: Path) -> None:
    cfg = _config(repo / "decoder" / "config.pbtxt")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    dims = {t.name: list(t.dims) for t in (*cfg.input, *cfg.output)}
    assert dims["point_coords"] == [-1, -1, 2] and dims["point_labels"] == [-1, -1]
    assert dims["image_embeddings"] == [1, 256, 64, 64] and dims["low_res_masks"] == [-1, 4, 256, 256]


@pytest.mark.slow
def test_batched_encoder_runs_any_batch_up_to_max(repo: Path) -> None:
    """Batch 3 in ONNX Runtime equals the same images one at a time (what Triton's batcher relies on)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(repo / "encoder" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).standard_normal((3, 3, 256, 256)).astype(np.float32)
    batched = sess.run(None, {"image": images})[0]
    single = np.concatenate([sess.run(None, {"image": images[i:i + 1]})[0] for i in range(3)])
    assert batched.shape == (3, 256, 64, 64)
    assert np.abs(batched - single).max() <= 1e-4


@pytest.mark.slow
def test_config_checker_catches_a_mismatch(repo: Path, tmp_path: Path) -> None:
    """The comparison above is not vacuous: a config with a wrong dim disagrees with the graph."""
    wrong = tmp_path / "config.pbtxt"
    wrong.write_text((repo / "decoder" / "config.pbtxt").read_text().replace("dims: [ -1, -1, 2 ]", "dims: [ -1, 2 ]"))
    graph = _graph_io(repo / "decoder" / "1" / "model.onnx")
    assert _config_io(_config(wrong)) != {n: (t, _expected_config_dims(d, False)) for n, (t, d) in graph.items()}


@pytest.mark.parametrize("argv,message", [
    (["export", "lite_medsam"], "needs --out DIR"),
    (["export", "lite_medsam", "--triton-repo", "{tmp}/r", "--triton-max-batch", "0"], "--triton-max-batch"),
    (["export", "lite_medsam", "--triton-repo", "{tmp}/full"], "is not empty"),
])
def test_bad_triton_options_fail_before_export(argv: list[str], message: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_fp16_without_the_converter_fails_before_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    from engine.export import cli

    monkeypatch.setattr(cli, "_fp16_converter_installed", lambda: False)
    assert main(["export", "lite_medsam", "--triton-repo", str(tmp_path / "r"), "--fp16"]) == 2
    assert "pip install onnxconverter-common" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
