"""TorchBackend options: channels-last, torch.compile (or its fallback warning), CUDA graphs, fp16.

CPU tests use a tiny random-weight model (64x64 input, 16x16 embedding, the real prompt encoder
and mask decoder) plus LiteMedSAM's real encoder for channels-last; GPU tests skip without CUDA.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import engine.backends.torch_backend as tb
from engine.backends.factory import create_backend
from engine.backends.torch_backend import TorchBackend, TorchOptions
from engine.models.common import LayerNorm2d
from engine.models.mask_decoder import MaskDecoder
from engine.models.prompt_encoder import PromptEncoder
from engine.models.sam import SamModel
from engine.models.transformer import TwoWayTransformer
from tests.refs import perturb_

SIDE, EMBED_HW = 64, (16, 16)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


class TinyEncoder(nn.Module):
    """Two strided convs with BatchNorm: ``(1, 3, 64, 64)`` -> ``(1, 256, 16, 16)``."""

    output_size = EMBED_HW

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.GELU(),
            nn.Conv2d(32, 256, 3, stride=2, padding=1), LayerNorm2d(256),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tiny_model(seed: int = 0, encoder: nn.Module | None = None, mlp_dim: int = 2048) -> SamModel:
    """The real prompt encoder + mask decoder at seeded weights on a 16x16 embedding, behind
    ``encoder`` (default ``TinyEncoder``: 64x64 images)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SamModel(
            encoder if encoder is not None else TinyEncoder(),
            PromptEncoder(embed_dim=256, image_embedding_size=EMBED_HW, input_image_size=(SIDE, SIDE), mask_in_chans=16),
            MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=mlp_dim, num_heads=8),
                transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
            ),
        )
    return perturb_(model, seed)


def image(seed: int = 0, side: int = SIDE) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, side, side)).astype(np.float32)


def prompts(b: int, n: int, seed: int = 0, with_mask: bool = True) -> dict[str, np.ndarray]:
    """B prompts of N points (last one a pad point), half of them with a mask when ``with_mask``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, (b, n)).astype(np.float32)
    labels[:, -1] = -1
    h, w = EMBED_HW
    return {
        "point_coords": rng.uniform(0, SIDE, (b, n, 2)).astype(np.float32),
        "point_labels": labels,
        "mask_input": rng.standard_normal((b, 1, 4 * h, 4 * w)).astype(np.float32) * 3,
        "has_mask_input": (np.arange(b) % 2 == 0).astype(np.float32) * with_mask,
    }


def assert_close(actual: Any, expected: Any, tol: float = 1e-5) -> None:
    torch.testing.assert_close(torch.as_tensor(actual).cpu(), torch.as_tensor(expected).cpu(), atol=tol, rtol=tol)


@pytest.fixture(scope="module")
def eager() -> TorchBackend:
    return TorchBackend(tiny_model(), SIDE)


# --- options and their errors -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("device", "options", "exception"),
    [
        ("cpu", {}, None),
        ("cpu", {"channels_last": True, "max_graphs": 1}, None),
        ("cpu", {"precision": "fp64"}, "precision must be one of"),
        ("cpu", {"precision": "fp16"}, "precision fp16 needs a CUDA device"),
        ("cpu", {"precision": "bf16"}, "precision bf16 needs a CUDA device"),
        ("cpu", {"channels_last": "yes"}, "channels_last must be True, False or None"),
        ("cpu", {"cuda_graphs": True}, "cuda_graphs=True needs a CUDA device"),
        ("cpu", {"compile": "fastest"}, "compile must be True, False or a mode"),
        ("cpu", {"compile": "reduce-overhead"}, "reduce-overhead' means CUDA graphs"),
        ("cuda", {"cuda_graphs": True, "compile": True}, "compile and cuda_graphs cannot be combined"),
        ("cuda", {"cuda_graphs": True, "compile": "reduce-overhead"}, "cannot be combined"),
        ("cuda", {"max_graphs": 0}, "max_graphs must be an int >= 1"),
        ("cuda", {"max_graphs": True}, "max_graphs must be an int >= 1"),
    ],
)
def test_option_validation(device: str, options: dict[str, Any], exception: str | None) -> None:
    opts = TorchOptions(**options)
    if exception is None:
        opts.validate(torch.device(device))
        return
    with pytest.raises(ValueError, match=exception):
        opts.validate(torch.device(device))
    with pytest.raises(ValueError, match=exception):  # the backend checks before moving the model
        TorchBackend(tiny_model(), SIDE, device, **options)


def test_factory_refuses_torch_options_for_other_runtimes() -> None:
    with pytest.raises(ValueError, match="torch_options apply to the torch backend only"):
        create_backend("onnxruntime", "lite_medsam", torch_options=TorchOptions())


def test_describe_reports_options() -> None:
    info = TorchBackend(tiny_model(), SIDE, channels_last=True).describe()
    assert (info.runtime, info.device, info.precision) == ("torch", "cpu", "fp32")
    assert "channels_last=on" in info.detail and "cuda_graphs=off" in info.detail and "compile=off" in info.detail
    assert "channels_last=off" in TorchBackend(tiny_model(), SIDE).describe().detail  # CPU default


def test_bad_image_shape_names_the_expected_one(eager: TorchBackend) -> None:
    with pytest.raises(ValueError, match=r"\(1, 3, 64, 64\)"):
        eager.encode(image()[:, :, :32])


# --- CPU equivalence ----------------------------------------------------------------------------
def test_eager_decode_matches_model_decode(eager: TorchBackend) -> None:
    emb = eager.encode(image())
    p = prompts(3, 4)
    with torch.inference_mode():
        iou, low = eager.model.decode(emb, *(torch.from_numpy(v) for v in p.values()))
    out = eager.decode(emb, **p)
    assert_close(out[0], iou, 0)
    assert_close(out[1], low, 0)


@pytest.mark.parametrize("with_mask", [False, True])
def test_graph_safe_decode_matches_eager(eager: TorchBackend, with_mask: bool) -> None:
    """The capture-safe formulation (mask always blended, caches off) equals the eager model."""
    emb = eager.encode(image())
    p = prompts(2, 3, seed=1, with_mask=with_mask)
    expected = eager.decode(emb, **p)
    with torch.inference_mode():
        iou, low = tb.graph_safe_decode(eager.model, emb, *(torch.from_numpy(v) for v in p.values()))
    assert_close(iou, expected[0])
    assert_close(low, expected[1])


def test_channels_last_matches_eager(eager: TorchBackend) -> None:
    nhwc = TorchBackend(tiny_model(), SIDE, channels_last=True)
    assert nhwc.model.image_encoder.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    emb = nhwc.encode(image())
    assert emb.is_contiguous() and emb.dtype == torch.float32
    assert_close(emb, eager.encode(image()))
    p = prompts(2, 3)
    for a, b in zip(nhwc.decode(emb, **p), eager.decode(eager.encode(image()), **p)):
        assert_close(a, b)


def test_channels_last_lite_medsam_real_weights() -> None:
    from engine.models.registry import load_model
    from tests.refs import medsam_checkpoint

    ckpt = medsam_checkpoint()
    x = image(2, 256)
    plain = TorchBackend(load_model("lite_medsam", ckpt), 256).encode(x)
    nhwc = TorchBackend(load_model("lite_medsam", ckpt), 256, channels_last=True).encode(x)
    assert_close(nhwc, plain, 1e-4)  # conv sums in another order; embedding values are O(1)


@pytest.mark.slow  # inductor compiles encoder + decoder: ~85 s on 2 loaded cores
def test_compile_matches_eager_or_warns(eager: TorchBackend) -> None:
    """With a C++ compiler inductor runs and matches eager; without one the backend warns and runs eager."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = TorchBackend(tiny_model(), SIDE, compile=True)
        emb = compiled.encode(image())
        outs = [compiled.decode(emb, **prompts(2, 3, seed=s)) for s in (0, 1)]
    fallback = [str(w.message) for w in caught if "eager" in str(w.message)]
    if tb.cpp_compiler() is None:
        assert fallback and "compile=off" in compiled.describe().detail
    else:
        assert not fallback, fallback
        assert "compile=default" in compiled.describe().detail
    assert_close(emb, eager.encode(image()))
    ref_emb = eager.encode(image())
    for s, out in zip((0, 1), outs):
        for a, b in zip(out, eager.decode(ref_emb, **prompts(2, 3, seed=s))):
            assert_close(a, b)


def test_compile_without_cpp_compiler_warns_and_runs_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tb, "cpp_compiler", lambda: None)
    with pytest.warns(UserWarning, match="needs a C\\+\\+ compiler"):
        backend = TorchBackend(tiny_model(), SIDE, compile=True)
    assert backend.options.compile is False and "compile=off" in backend.describe().detail
    backend.decode(backend.encode(image()), **prompts(1, 2))


def test_compile_failure_warns_and_runs_eager(monkeypatch: pytest.MonkeyPatch, eager: TorchBackend) -> None:
    def broken(fn: Any, mode: str | None = None) -> Any:
        def run(*args: Any) -> Any:
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    backend = TorchBackend(tiny_model(), SIDE, compile=True)
    with pytest.warns(UserWarning, match="torch.compile of the encoder failed.*running it eager"):
        emb = backend.encode(image())
    with pytest.warns(UserWarning, match="torch.compile of the decoder failed"):
        out = backend.decode(emb, **prompts(1, 2))
    assert_close(emb, eager.encode(image()), 0)
    assert_close(out[1], eager.decode(emb, **prompts(1, 2))[1], 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend.decode(emb, **prompts(1, 2))  # no second warning, no second compile attempt
    detail = backend.describe().detail
    assert "encoder eager after a failure (RuntimeError: InvalidCxxCompiler" in detail
    assert "decoder eager after a failure" in detail


def test_a_later_compiled_call_failure_falls_back(monkeypatch: pytest.MonkeyPatch, eager: TorchBackend) -> None:
    """A recompile failing on a new prompt shape (after a first compiled call worked) runs eager too."""
    calls = {"decoder": 0}

    def flaky(fn: Any, mode: str | None = None) -> Any:
        def run(*args: Any) -> Any:
            if fn != backend._encode_eager:  # the decoder (model.forward)
                calls["decoder"] += 1
                if calls["decoder"] > 1:
                    raise RuntimeError("recompile: guard failed on a new shape")
            return fn(*args)
        return run

    monkeypatch.setattr(tb, "cpp_compiler", lambda: "/usr/bin/g++")
    monkeypatch.setattr(torch, "compile", flaky)
    backend = TorchBackend(tiny_model(), SIDE, compile=True)
    emb = backend.encode(image())
    backend.decode(emb, **prompts(1, 2))
    assert "eager" not in backend.describe().detail and "compile=default" in backend.describe().detail
    with pytest.warns(UserWarning, match="torch.compile of the decoder failed.*guard failed"):
        out = backend.decode(emb, **prompts(3, 4))
    for a, b in zip(out, eager.decode(eager.encode(image()), **prompts(3, 4))):
        assert_close(a, b)
    assert "decoder eager after a failure" in backend.describe().detail
    assert "encoder eager" not in backend.describe().detail
    backend.decode(emb, **prompts(3, 4))
    assert calls["decoder"] == 2  # the compiled decoder is not tried again


def test_reduce_overhead_encode_returns_a_copy(monkeypatch: pytest.MonkeyPatch, eager: TorchBackend) -> None:
    """compile='reduce-overhead' returns CUDA-graph-tree memory that the next call overwrites (faked
    here with one static buffer); each embedding handed out must survive the next encode."""
    static: dict[str, torch.Tensor] = {}

    def graph_tree(fn: Any, mode: str | None = None) -> Any:
        def run(x: torch.Tensor) -> torch.Tensor:
            out = fn(x)
            buf = static.setdefault("out", torch.empty_like(out))
            return buf.copy_(out)
        return run

    monkeypatch.setattr(torch, "compile", graph_tree)
    backend = TorchBackend(tiny_model(), SIDE)
    backend.options = TorchOptions(compile="reduce-overhead")  # CUDA-only option, set past validate
    first = backend.encode(image(0))
    second = backend.encode(image(1))
    assert first.data_ptr() != static["out"].data_ptr() != second.data_ptr()
    assert_close(first, eager.encode(image(0)), 0)
    assert_close(second, eager.encode(image(1)), 0)


def test_encoder_graph_is_captured_once_by_racing_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Double-checked locking: two threads encoding the first image capture one graph."""
    import threading
    import time

    backend = TorchBackend(tiny_model(), SIDE)
    captured: list[object] = []
    start = threading.Barrier(2)

    def slow_capture(shape: tuple[int, ...]) -> object:
        time.sleep(0.2)  # both threads are past the unlocked check by now
        captured.append(object())
        return captured[-1]

    monkeypatch.setattr(backend, "_capture_encoder", slow_capture)
    results: list[object] = []

    def first_encode() -> None:
        start.wait()
        results.append(backend._ensure_encoder_graph((1, 3, SIDE, SIDE)))

    threads = [threading.Thread(target=first_encode) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(captured) == 1 and results == [captured[0], captured[0]]


# --- GPU ----------------------------------------------------------------------------------------
@pytest.mark.gpu
@cuda
def test_cuda_graphs_replay_equals_eager_for_several_shapes() -> None:
    eager_gpu = TorchBackend(tiny_model(), SIDE, "cuda")
    graphs = TorchBackend(tiny_model(), SIDE, "cuda", cuda_graphs=True, max_graphs=2)
    assert "cuda_graphs=on" in graphs.describe().detail and "channels_last=on" in graphs.describe().detail
    emb = graphs.encode(image())
    assert_close(emb, eager_gpu.encode(image()), 1e-4)
    # (1, 2) twice (a hit), a miss, then (1, 2) again after the LRU of 2 dropped it.
    for b, n, seed in [(1, 2, 0), (1, 2, 1), (3, 5, 2), (2, 1, 3), (1, 2, 4)]:
        p = prompts(b, n, seed)
        for a, e in zip(graphs.decode(emb, **p), eager_gpu.decode(emb, **p)):
            assert_close(a, e, 1e-4)
    assert len(graphs._decoder_graphs) == 2


@pytest.mark.gpu
@cuda
def test_cuda_graphs_follow_a_new_embedding() -> None:
    """The stream engine swaps embeddings per keyframe: a replay must read the new one, and the
    first keyframe's embedding must not change when the encoder graph runs again."""
    eager_gpu = TorchBackend(tiny_model(), SIDE, "cuda")
    graphs = TorchBackend(tiny_model(), SIDE, "cuda", cuda_graphs=True)
    first = graphs.encode(image(0))
    kept = first.clone()
    second = graphs.encode(image(1))
    assert_close(first, kept, 0)  # not aliased to the encoder graph's static output
    p = prompts(2, 3)
    out_first = graphs.decode(first, **p)
    out_second = graphs.decode(second, **p)
    assert not np.allclose(out_first[1], out_second[1])
    for a, e in zip(out_second, eager_gpu.decode(second, **p)):
        assert_close(a, e, 1e-4)
    for a, e in zip(graphs.decode(first, **p), out_first):  # and back again
        assert_close(a, e, 0)
    numpy_emb = second.cpu().numpy()
    assert_close(graphs.decode(numpy_emb, **p)[1], out_second[1], 0)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_half_precision_near_fp32(precision: str, cuda_graphs: bool) -> None:
    fp32 = TorchBackend(tiny_model(), SIDE, "cuda")
    half = TorchBackend(tiny_model(), SIDE, "cuda", precision, cuda_graphs=cuda_graphs)
    emb32, emb16 = fp32.encode(image()), half.encode(image())
    assert emb16.dtype == torch.float32
    tol = 0.05 if precision == "fp16" else 0.2
    assert_close(emb16, emb32, tol)
    p = prompts(2, 3)
    iou32, low32 = fp32.decode(emb32, **p)
    iou16, low16 = half.decode(emb32, **p)
    assert_close(iou16, iou32, tol)
    assert np.mean((low16 > 0) == (low32 > 0)) > 0.99  # the masks, not every logit


@pytest.mark.gpu
@cuda
def test_compile_on_cuda_matches_eager() -> None:
    pytest.importorskip("triton", reason="torch.compile on CUDA needs triton")
    eager_gpu = TorchBackend(tiny_model(), SIDE, "cuda")
    compiled = TorchBackend(tiny_model(), SIDE, "cuda", compile="max-autotune-no-cudagraphs")
    emb = eager_gpu.encode(image())
    assert_close(compiled.encode(image()), emb, 1e-4)
    p = prompts(2, 3)
    for a, e in zip(compiled.decode(emb, **p), eager_gpu.decode(emb, **p)):
        assert_close(a, e, 1e-4)
