"""OrtBackend's no-mask decoder pair runs only with the contract decoder it was exported with.

Each pair file records the contract decoder file's sha256 (ONNX ``metadata_props``); a missing
pair, a pair from another export or one without the record falls back to the contract decoder.
A failure while exporting the optional pair deletes it and warns instead of aborting the export.
LiteMedSAM's decoder at random weights; the encoder is a stand-in graph of the contract's shape.
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

import engine.export.no_mask as no_mask
from engine.backends.ort_backend import OrtBackend
from engine.contract import DECODER_OUTPUTS
from engine.export.common import FP32_TOLERANCE
from engine.export.no_mask import CONTRACT_SHA256_KEY, export_no_mask_decoder, export_no_mask_pair, no_mask_paths
from engine.export.onnx_export import export_decoder
from engine.export.prompts import realistic_prompts
from engine.models.registry import build_model, get_spec
from engine.models.sam import SamModel
from tests.refs import perturb_

SIDE = get_spec("lite_medsam").input_size


class _StubEncoder(nn.Module):
    output_size = (64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _write_stub_encoder(path: Path) -> Path:
    """``image (1, 3, S, S)`` -> zeros ``image_embeddings (1, 256, 64, 64)``: only the I/O is checked."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [1, 256, 64, 64])
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["image_embeddings"])], "stub_encoder",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("image_embeddings", TensorProto.FLOAT, [1, 256, 64, 64])],
        initializer=[shape],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[SamModel, Path]:
    """(model, folder) with the stub encoder, the contract decoder and its no-mask pair."""
    folder = tmp_path_factory.mktemp("no_mask_pair")
    spec = dataclasses.replace(get_spec("lite_medsam"), encoder=_StubEncoder)
    torch.manual_seed(0)
    model = perturb_(build_model(spec), 0)
    _write_stub_encoder(folder / "m_encoder.onnx")
    export_decoder(model, folder / "m_decoder.onnx")
    export_no_mask_decoder(model, folder / "m_decoder.onnx")
    return model, folder


def _copy(folder: Path, dest: Path, with_pair: bool = True) -> Path:
    names = ["m_encoder.onnx", "m_decoder.onnx"]
    names += [p.name for p in no_mask_paths(folder / "m_decoder.onnx")] if with_pair else []
    for name in names:
        shutil.copy(folder / name, dest / name)
    return dest


def _backend(folder: Path) -> OrtBackend:
    return OrtBackend(folder / "m_encoder.onnx", folder / "m_decoder.onnx", SIDE, threads=1)


def _no_mask_prompts(b: int = 2) -> dict[str, np.ndarray]:
    p = realistic_prompts(b, 3, SIDE, seed=4)
    p["has_mask_input"][:] = 0
    return p


def _contract_outputs(backend: OrtBackend, emb: np.ndarray, p: dict[str, np.ndarray]) -> list[np.ndarray]:
    return backend.decoder.run(list(DECODER_OUTPUTS), {"image_embeddings": emb, **p})


def test_a_matching_pair_is_used(exported) -> None:  # noqa: ANN001
    _, folder = exported
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend = _backend(folder)
    assert backend._no_mask is not None and backend.max_batch is None  # CPU: any prompt batch
    emb = np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32)
    p = _no_mask_prompts()
    for got, want in zip(backend.decode(emb, **p), _contract_outputs(backend, emb, p)):
        assert np.abs(got - want).max() <= FP32_TOLERANCE


def test_missing_pair_uses_the_contract_decoder(exported, tmp_path: Path) -> None:  # noqa: ANN001
    _, folder = exported
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an export folder without the pair is normal: no warning
        backend = _backend(_copy(folder, tmp_path, with_pair=False))
    assert backend._no_mask is None
    emb = np.zeros((1, 256, 64, 64), np.float32)
    p = _no_mask_prompts()
    for got, want in zip(backend.decode(emb, **p), _contract_outputs(backend, emb, p)):
        assert np.array_equal(got, want)


def _edit(path: Path, edit) -> None:  # noqa: ANN001
    model = onnx.load(str(path))
    edit(model)
    onnx.save(model, str(path))


@pytest.mark.parametrize("case", ["decoder replaced", "pair without record"])
def test_foreign_pair_is_not_used(exported, tmp_path: Path, case: str) -> None:  # noqa: ANN001
    _, folder = exported
    dest = _copy(folder, tmp_path)
    if case == "decoder replaced":  # the pair's names match, its weights belong to another decoder
        _edit(dest / "m_decoder.onnx", lambda m: setattr(m, "doc_string", "another export"))
    else:  # an export from before the record existed
        for path in no_mask_paths(dest / "m_decoder.onnx"):
            _edit(path, lambda m: m.ClearField("metadata_props"))
    with pytest.warns(UserWarning, match="ignoring the no-mask decoder pair.*not exported with this decoder"):
        backend = _backend(dest)
    assert backend._no_mask is None


def test_pair_files_record_the_decoder_sha256(exported) -> None:  # noqa: ANN001
    from engine.weights import sha256_file

    _, folder = exported
    digest = sha256_file(folder / "m_decoder.onnx")
    for path in no_mask_paths(folder / "m_decoder.onnx"):
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        assert props == {CONTRACT_SHA256_KEY: digest}


class _CountingSession:
    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner, self.runs = inner, 0

    def run(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        self.runs += 1
        return self.inner.run(*args, **kwargs)


def test_image_side_cache_trusts_only_frozen_embeddings(exported) -> None:  # noqa: ANN001
    """``encode`` returns a read-only embedding whose image side is computed once, and kept while
    writeable embeddings come and go; a writeable embedding changed in place between decodes is
    compared by value and recomputed, as is a frozen one thawed and changed."""
    _, folder = exported
    backend = _backend(folder)
    side = _CountingSession(backend._no_mask[0])
    backend._no_mask = (side, backend._no_mask[1])
    emb = backend.encode(np.zeros((1, 3, SIDE, SIDE), np.float32))
    assert not emb.flags.writeable
    p = _no_mask_prompts(1)
    first = backend.decode(emb, **p)
    backend.decode(emb, **p)
    assert side.runs == 1
    mutable = np.random.default_rng(1).standard_normal((1, 256, 64, 64)).astype(np.float32)
    backend.decode(mutable, **p)
    mutable *= 0.5  # same object, new values
    got = backend.decode(mutable, **p)
    assert side.runs == 3
    for g, want in zip(got, _contract_outputs(backend, mutable, p)):
        assert np.abs(g - want).max() <= FP32_TOLERANCE
    assert np.array_equal(backend.decode(emb, **p)[1], first[1]) and side.runs == 3  # still kept
    owned = np.random.default_rng(2).standard_normal((1, 256, 64, 64)).astype(np.float32)
    owned.flags.writeable = False  # frozen: owns its memory
    backend.decode(owned, **p)
    backend.decode(owned, **p)
    assert side.runs == 4
    owned.flags.writeable = True  # thawed and changed in place: no longer trusted by identity
    owned *= 0.5
    got = backend.decode(owned, **p)
    assert side.runs == 5
    for g, want in zip(got, _contract_outputs(backend, owned, p)):
        assert np.abs(g - want).max() <= FP32_TOLERANCE


def test_image_side_cache_serves_interleaved_embeddings_and_forgets_dead_ones(exported) -> None:  # noqa: ANN001
    """Sessions sharing one backend decode on their own keyframes in turn: each embedding's image
    side is computed once, not once per switch, and an embedding's entry goes when it dies."""
    import gc

    from engine.backends.ort_backend import MAX_FROZEN_SIDES

    _, folder = exported
    backend = _backend(folder)
    side = _CountingSession(backend._no_mask[0])
    backend._no_mask = (side, backend._no_mask[1])
    rng = np.random.default_rng(3)
    embs = [backend.encode(rng.random((1, 3, SIDE, SIDE), np.float32)) for _ in range(3)]
    p = _no_mask_prompts(1)
    alone = [_contract_outputs(backend, e, p)[1] for e in embs]
    for _ in range(3):
        for e, want in zip(embs, alone):
            assert np.abs(backend.decode(e, **p)[1] - want).max() <= FP32_TOLERANCE
    assert side.runs == 3
    assert len(backend._frozen_sides) == 3
    del e, embs[1:]
    gc.collect()
    assert len(backend._frozen_sides) == 1  # the dead keyframes' sides are freed with them
    many = [backend.encode(rng.random((1, 3, SIDE, SIDE), np.float32)) for _ in range(MAX_FROZEN_SIDES + 2)]
    for e in many:
        backend.decode(e, **p)
    assert len(backend._frozen_sides) == MAX_FROZEN_SIDES  # bounded, oldest out first
    backend.decode(many[-1], **p)
    assert side.runs == 3 + len(many)


def _const_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return onnx.numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return onnx.numpy_helper.to_array(node.attribute[0].t)
    return None


@pytest.mark.parametrize("which", ["contract", "prompt graph"])
def test_decoder_graphs_avoid_slow_onnx_patterns(exported, which: str) -> None:  # noqa: ANN001
    """Softmax only over the last axis (ONNX Runtime transposes around any other axis: ~4x slower
    on the (B, 8, Nt, 4096) image->token scores), no multiply by a constant 1 (the ONNX spelling of
    baddbmm's alpha/beta: extra passes over (B, 4096, 256)), and no Gather copy of an image-side
    input in the prompt graph."""
    _, folder = exported
    path = folder / "m_decoder.onnx" if which == "contract" else no_mask_paths(folder / "m_decoder.onnx")[1]
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.value_info, *graph.input, *graph.output]}
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    assert softmaxes
    for node in softmaxes:
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        assert axis in (-1, ranks[node.input[0]] - 1), f"{node.name}: softmax over axis {axis}"
    for node in graph.node:
        if node.op_type == "Mul":
            consts = [_const_value(graph, i) for i in node.input]
            assert not any(c is not None and c.size == 1 and float(c) == 1.0 for c in consts), node.name
    inputs = {i.name for i in graph.input}
    assert not [n.name for n in graph.node if n.op_type == "Gather" and n.input[0] in inputs and n.input[0].startswith("side_")]


def test_a_failing_pair_export_warns_and_leaves_no_files(exported, tmp_path: Path,  # noqa: ANN001
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    model, folder = exported
    decoder = _copy(folder, tmp_path, with_pair=False) / "m_decoder.onnx"

    def crash(model: SamModel, decoder_path: Path, opset: int = 17) -> None:
        for path in no_mask_paths(decoder_path):
            path.write_bytes(b"half-written")
        raise RuntimeError("Exporting the operator foo to ONNX opset 17 is not supported")

    monkeypatch.setattr(no_mask, "export_no_mask_decoder", crash)
    emb = np.zeros((1, 256, 64, 64), np.float32)
    with pytest.warns(UserWarning, match=r"skipped the optional no-mask.*opset 17 is not supported.*within 0\.001.*--opset"):
        assert export_no_mask_pair(model, decoder, emb) is None
    assert not any(p.exists() for p in no_mask_paths(decoder))
    assert decoder.is_file()  # the contract decoder stays


def test_prepared_image_side_spares_the_first_decode(exported) -> None:  # noqa: ANN001
    """``prepare_image_side`` computes an encoded embedding's image side at once; decodes on it then
    run the prompt graph only, with the same outputs as the contract decoder."""
    _, folder = exported
    backend = _backend(folder)
    side = _CountingSession(backend._no_mask[0])
    backend._no_mask = (side, backend._no_mask[1])
    emb = backend.encode(np.random.default_rng(5).random((1, 3, SIDE, SIDE), np.float32))
    backend.prepare_image_side(emb)
    assert side.runs == 1
    p = _no_mask_prompts(2)
    for g, want in zip(backend.decode(emb, **p), _contract_outputs(backend, emb, p)):
        assert np.abs(g - want).max() <= FP32_TOLERANCE
    assert side.runs == 1


def test_stream_keyframe_encoder_prepares_the_image_side(exported) -> None:  # noqa: ANN001
    """A stream's keyframe encoder computes each keyframe's image side on its own thread, right
    after the encode, so the per-frame decodes never run the image-side graph."""
    import threading

    from engine.stream.engine import StreamEngine
    from engine.stream.events import Prompt
    from engine.stream.scheduler import KeyframePolicy
    from engine.types import Frame

    _, folder = exported
    backend = _backend(folder)
    side = _CountingSession(backend._no_mask[0])
    backend._no_mask = (side, backend._no_mask[1])
    threads: list[str] = []
    run = side.run
    side.run = lambda *a, **k: (threads.append(threading.current_thread().name), run(*a, **k))[1]  # type: ignore
    rng = np.random.default_rng(6)
    eng = StreamEngine(backend, get_spec("lite_medsam"), KeyframePolicy(interval=2), async_encoder=True)
    eng.add_object(Prompt.box(np.array([40, 30, 200, 180], np.float32)))
    steps = 0
    for i in range(6):
        res = eng.step(Frame(i, i, rng.integers(0, 255, (240, 320, 3), np.uint8)))
        eng.encoder.wait_idle()
        steps += res.status == "ok"
    keyframes = eng.stats.keyframes_total
    eng.close()
    assert steps >= 3 and keyframes >= 2
    assert side.runs >= keyframes and threading.current_thread().name not in threads, threads
