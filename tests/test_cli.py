"""The `arsel` CLI on real weights and real images (LiteMedSAM, box prompts)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.cli import main, parse_box, parse_points
from tests.refs import medsam_checkpoint


def test_parse_points_and_box() -> None:
    pts, labels = parse_points(["10,20", "30,40,0"])
    assert pts.tolist() == [[10, 20], [30, 40]] and labels.tolist() == [1, 0]
    assert parse_box("1,2,3,4").tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--point", "1"], "must have 2 or 3 values"),
        (["--point", "a,b"], "comma-separated numbers"),
        (["--point", "1,2,5"], "LABEL must be 1"),
        (["--box", "1,2,3"], "must have 4 values"),
        ([], "give a prompt"),
        (["--box", "0,0,5000,10"], "outside"),
    ],
)
def test_segment_bad_prompts(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture, argv: list, match: str) -> None:
    code = main(["segment", str(data_dir / "sam_images" / "truck.jpg"), "--checkpoint", str(medsam_checkpoint()),
                 "--out", str(tmp_path / "m.png"), *argv])
    assert code == 2
    assert match in capsys.readouterr().err


def test_segment_missing_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["segment", str(tmp_path / "nope.jpg"), "--box", "0,0,1,1", "--out", str(tmp_path / "m.png")]) == 2
    assert "image not found" in capsys.readouterr().err


def test_segment_writes_mask_logits_overlay_json(tmp_path: Path, data_dir: Path) -> None:
    img = data_dir / "sam_images" / "truck.jpg"
    out = tmp_path / "mask.png"
    code = main(["segment", str(img), "--model", "lite_medsam", "--checkpoint", str(medsam_checkpoint()),
                 "--box", "425,600,700,875", "--out", str(out), "--logits", str(tmp_path / "l.npy"),
                 "--overlay", str(tmp_path / "o.jpg"), "--json", str(tmp_path / "r.json")])
    assert code == 0
    mask = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (1200, 1800) and set(np.unique(mask)) <= {0, 255}
    logits = np.load(tmp_path / "l.npy")
    assert logits.shape == (1200, 1800) and logits.dtype == np.float32
    assert np.array_equal(logits > 0, mask == 255)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["area_px"] == int((mask == 255).sum()) > 1000
    x0, y0, x1, y1 = report["bbox_xyxy"]
    assert 380 <= x0 and x1 <= 745 and 555 <= y0 and y1 <= 920  # the wheel, not the whole truck
    assert report["encode_ms"] > 0 and report["decode_ms"] > 0
    assert report["original_hw"] == report["image_hw"] == [1200, 1800]  # image_hw: the old key, kept one release
    assert cv2.imread(str(tmp_path / "o.jpg")).shape == (1200, 1800, 3)


def test_models_lists_every_model(capsys: pytest.CaptureFixture) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("sam_vit_b", "sam_vit_l", "sam_vit_h", "mobile_sam", "lite_medsam"):
        assert name in out
    assert "arsel weights fetch sam_vit_h" in out or "sam_vit_h.pth" in out
