"""``engine.validate`` (the checks the CLI and the server share) and ``engine.atomic`` directly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.atomic import AtomicOutputs
from engine.validate import (InputError, box_xyxy, depth_units, image_hw, intrinsics, json_text, nonfinite_weight,
                             number, output_dir, output_file, points_xy)


@pytest.mark.parametrize("value,kw,match", [
    ("nan", {}, "finite"), (float("inf"), {"lo": 0}, "finite"), ("x", {}, "must be a number"),
    (-1, {"lo": 0}, r"in \[0, inf\]"), (0, {"lo": 0, "lo_open": True}, r"in \(0, inf\]"),
    (2.5, {"integer": True}, "whole number"), (1e9, {"hi": 10}, r"in \[-inf, 10\]"),
])
def test_number_names_the_flag(value: object, kw: dict, match: str) -> None:
    with pytest.raises(InputError, match=rf"^--flag .*{match}"):
        number("--flag", value, **kw)


def test_number_passes_good_values() -> None:
    assert number("--n", "3", lo=1, integer=True) == 3 and number("--f", 0.5, lo=0, hi=1) == 0.5


@pytest.mark.parametrize("box,match", [
    ([1, 2, 3], "4 values"), ([0, 0, np.nan, 5], "finite"), ([5, 5, 5, 9], "zero area"),
    ([9, 9, 5, 5], "top-left"), ([100, 100, 200, 200], "outside the 64x48 image"),
    ([-50, -50, -10, -10], "outside"),
])
def test_bad_boxes(box: list, match: str) -> None:
    with pytest.raises(InputError, match=match):
        box_xyxy("--box", box, (48, 64))


def test_boxes_may_stick_out_points_may_not() -> None:
    np.testing.assert_array_equal(box_xyxy("--box", [-5, -5, 10, 10], (48, 64)), [-5, -5, 10, 10])
    assert points_xy("--point", [[0, 0], [63.5, 47.5]], (48, 64)).shape == (2, 2)
    with pytest.raises(InputError, match="outside"):
        points_xy("--point", [[64, 0]], (48, 64))


def test_output_paths(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    (tmp_path / "d.png").mkdir()
    assert output_file("--out", tmp_path / "new" / "deep" / "m.png", (".png",)) is not None  # parents to create
    for path, suffixes, match in ((tmp_path / "m.txt", (".png",), "use a .png"), (tmp_path / "d.png", (".png",), "folder"),
                                  (tmp_path / "f.txt" / "m.png", (".png",), "not a folder")):
        with pytest.raises(InputError, match=match):
            output_file("--out", path, suffixes)
    with pytest.raises(InputError, match="not a folder"):
        output_dir("--out", tmp_path / "f.txt")


def test_image_sizes() -> None:
    image_hw("img", (480, 640))
    for hw, match in (((1, 3000), "aspect ratio"), ((4, 4), "each side"), ((20000, 20000), "each side")):
        with pytest.raises(InputError, match=match):
            image_hw("img", hw)


def test_depth_units() -> None:
    depth_units("d", np.full((4, 4), 1200, np.uint16), 0.001)  # 1.2 m in mm: fine
    depth_units("d", np.full((4, 4), 1.2, np.float32), 1.0)  # metres declared: fine
    with pytest.raises(InputError, match="looks like metres.*--depth-scale-m 1"):
        depth_units("d", np.full((4, 4), 1.2, np.float32), 0.001)
    with pytest.raises(InputError, match="outside"):
        depth_units("d", np.full((4, 4), 60000, np.uint16), 1.0)  # 60 km
    depth_units("d", np.full((4, 4), np.nan, np.float32), 0.001)  # no valid depth: nothing to judge


def test_intrinsics_plausibility() -> None:
    intrinsics("cam", 640, 480, 525, 525, 319.5, 239.5)
    for args, match in (((640, 480, 525, 525, -5000, 1e12), "principal point"),
                        ((640, 480, 1e9, 1e9, 320, 240), "focal length"), ((640, 480, 1, 1, 320, 240), "focal length"),
                        ((640, 480, float("nan"), 525, 320, 240), "finite")):
        with pytest.raises(InputError, match=match):
            intrinsics("cam", *args)


def test_nonfinite_weight_and_strict_json() -> None:
    torch = pytest.importorskip("torch")
    state = {"a": torch.zeros(3), "b": torch.tensor([1.0, float("nan")]), "n": torch.tensor([1])}
    assert nonfinite_weight(state) == "b" and nonfinite_weight({"a": np.ones(2)}) is None
    text = json_text({"score": float("nan"), "v": [np.float32(1.5), float("inf")], "k": np.int64(3)})
    assert json.loads(text) == {"score": None, "v": [1.5, None], "k": 3} and "NaN" not in text


def test_atomic_commit_merges_and_discard_cleans(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError), AtomicOutputs() as outs:
        (outs.folder(out) / "x.txt").write_text("1")
        outs.file(tmp_path / "r.json").write_text("{}")
        raise RuntimeError("fails half-way")
    assert list(tmp_path.iterdir()) == []  # temporaries and the folders made for them are gone
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("old")
    (out / "masks").mkdir()
    (out / "masks" / "stale.png").write_text("old")
    with AtomicOutputs() as outs:
        tmp = outs.folder(out)
        (tmp / "masks").mkdir()
        (tmp / "masks" / "00000.png").write_text("new")
        outs.file(tmp_path / "r.json").write_text("{}")
        assert not (out / "masks" / "00000.png").exists()  # nothing final before the end
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["00000.png"]  # masks/ replaced as a whole
    assert (out / "keep.txt").read_text() == "old" and (tmp_path / "r.json").is_file()
    assert not [p for p in tmp_path.rglob(".*part*")]


def test_wire_level_checks() -> None:
    """The checks the stream server added to the shared layer: finite lists, int64 timestamps, labels,
    sizes that must agree, depth arrays, in-memory image bytes, rigid poses, the size limit's type."""
    import cv2

    from engine import validate as v

    assert v.finite("k", [1, 2.5]) == [1.0, 2.5]
    for values, match in (([1, float("nan")], "finite"), ([10**400], "too large"), (["a"], "numbers")):
        with pytest.raises(InputError, match=match):
            v.finite("k", values)
    assert v.timestamp_ns("t", 5) == 5
    for t, match in ((2**63, "int64"), (-1, "int64"), (1.5, "integer"), (True, "integer")):
        with pytest.raises(InputError, match=match):
            v.timestamp_ns("t", t)
    with pytest.raises(InputError, match="got 7"):
        v.point_labels("label", [1, 0, 7])
    with pytest.raises(InputError, match="^depth is 32x24 but the image is 64x48; align"):
        v.same_hw("depth", (24, 32), "the image is", (48, 64, 3), "align")
    for depth, match in ((np.zeros((4, 4, 3), np.uint16), "3 channels"), (np.zeros((4, 4), np.uint8), "8-bit")):
        with pytest.raises(InputError, match=match):
            v.depth_array("depth", depth)
    png = cv2.imencode(".png", np.zeros((48, 64, 3), np.uint8))[1].tobytes()
    v.image_bytes("image", png, "png")
    for data, enc, match in ((png[:60], "png", "truncated"), (png, "jpeg", "not a JPEG")):
        with pytest.raises(InputError, match=match):
            v.image_bytes("image", data, enc)
    with pytest.raises(v.InputTooLarge, match="at most 256 px"):
        image_hw("image", (20, 300), max_side=256)
    for m, match in ((np.diag([2.0, 2.0, 2.0, 1.0]), "not a rigid"), (np.diag([-1.0, 1.0, 1.0, 1.0]), "mirrors"),
                     ([[10**400] * 4] * 4, "finite numbers")):
        with pytest.raises(InputError, match=match):
            v.pose("pose", m)
    with pytest.raises(InputError, match="sticks out of the 64x48 image; clamp"):
        box_xyxy("box", [10, 10, 70, 40], (48, 64), inside=True)
