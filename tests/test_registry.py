"""Registry and checkpoint loading: strict keys, wrong-kind detection, untrusted files."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import torch

from engine.models.registry import REGISTRY, CheckpointError, build_model, get_spec, identify, load_model, read_state_dict
from engine.models.vit import ImageEncoderViT, ViTConfig
from tests.refs import medsam_checkpoint


def test_registry_names_and_specs() -> None:
    assert set(REGISTRY) == {"sam_vit_b", "sam_vit_l", "sam_vit_h", "mobile_sam", "lite_medsam"}
    assert get_spec("lite_medsam").input_size == 256 and get_spec("lite_medsam").box_only
    assert get_spec("mobile_sam").input_size == 1024 and not get_spec("mobile_sam").box_only
    with pytest.raises(ValueError, match="known models: sam_vit_b"):
        get_spec("sam_vit_x")


@pytest.mark.parametrize("name", ["sam_vit_b", "sam_vit_l", "sam_vit_h", "mobile_sam", "lite_medsam"])
def test_identify_every_architecture(name: str) -> None:
    with torch.device("meta"):
        state = build_model(name).state_dict()
    assert identify(state) == name


def _meta_forward_hw(spec_or_name) -> tuple[tuple[int, int], tuple[int, int]]:  # noqa: ANN001
    """(prompt encoder grid, encoder output grid) of a model built and run on the meta device."""
    with torch.device("meta"):
        model = build_model(spec_or_name)
        side = model.prompt_encoder.input_image_size[0]
        out = model.image_encoder(torch.empty(1, 3, side, side))
    return tuple(model.prompt_encoder.image_embedding_size), tuple(out.shape[-2:])


@pytest.mark.parametrize("name", list(REGISTRY))
def test_prompt_grid_matches_encoder_output(name: str) -> None:
    grid, out = _meta_forward_hw(name)  # shapes only: no compute, ViT-H included
    assert grid == out == (64, 64)


def test_prompt_grid_follows_another_input_size() -> None:
    spec = dataclasses.replace(
        get_spec("sam_vit_b"), input_size=512,
        encoder=lambda: ImageEncoderViT(ViTConfig(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,),
                                                  img_size=512)),
    )
    assert _meta_forward_hw(spec) == ((32, 32), (32, 32))


def test_real_lite_medsam_loads_strictly() -> None:
    model = load_model("lite_medsam", medsam_checkpoint())
    assert sum(p.numel() for p in model.parameters()) > 9_000_000


def test_wrong_kind_names_the_model_it_looks_like() -> None:
    with pytest.raises(CheckpointError, match="looks like a 'lite_medsam' checkpoint.*--model lite_medsam"):
        load_model("mobile_sam", medsam_checkpoint())


def test_missing_keys_are_reported(tmp_path: Path) -> None:
    state = torch.load(medsam_checkpoint(), map_location="cpu", weights_only=True)
    state.pop("mask_decoder.iou_token.weight")
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="missing.*iou_token"):
        load_model("lite_medsam", path)


class _Evil:
    def __reduce__(self):  # noqa: ANN204 - executing this would be the attack
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "payload,match",
    [
        (b"", "is not a valid checkpoint"),
        (b"this is not a checkpoint", "is not a valid checkpoint"),
        (pickle.dumps({"x": _Evil()}), "is not a valid checkpoint"),
    ],
)
def test_corrupt_or_malicious_files_are_refused(tmp_path: Path, payload: bytes, match: str) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match=match) as info:
        read_state_dict(path)
    assert "weights_only=False" not in str(info.value)  # never advise unpickling arbitrary code


def test_truncated_checkpoint(tmp_path: Path) -> None:
    data = medsam_checkpoint().read_bytes()
    path = tmp_path / "trunc.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model("lite_medsam", path)


def test_non_tensor_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="state_dict of tensors"):
        read_state_dict(path)


def test_foreign_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="not a SAM-family checkpoint"):
        load_model("sam_vit_b", path)
