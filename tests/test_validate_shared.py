"""The CLI and the stream server reject the same bad intrinsics, box and depth through the same
``engine.validate`` function: the ``InputError`` is raised inside that very function on both paths
(its traceback ends there), and both messages carry the same words. The server's ``error`` codes
come from ``protocol.input_error_code``."""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np
import pytest

from engine import validate
from engine.cli import main
from engine.serve.client import encode_frame
from engine.serve.protocol import Limits, ProtocolError, check_prompt_inside, pack, parse_frame, parse_text, unpack

HW = (48, 64)


def _raised_in(tb: TracebackType | None) -> Any:
    """The code object of the function an exception was raised in (its traceback's last frame)."""
    assert tb is not None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code


def _cli_error(argv: list[str]) -> validate.InputError:
    """Run ``arsel ARGV --debug`` (the error escapes with its traceback) and return the InputError."""
    with pytest.raises(validate.InputError) as info:
        main([*argv, "--debug"])
    return info.value


def _server_error(call: Any, code: str) -> validate.InputError:
    """Run a server-side check; it must raise ``ProtocolError(code)`` made from an ``InputError``."""
    with pytest.raises(ProtocolError) as info:
        call()
    err = info.value
    assert err.code == code, err
    cause = err.__context__
    assert isinstance(cause, validate.InputError), f"{err} was not made from an InputError"
    assert err.message == str(cause)
    return cause


def _same_rule(cli: validate.InputError, server: validate.InputError, func: Any, fragment: str) -> None:
    assert _raised_in(cli.__traceback__) is func.__code__, f"CLI: {cli}"
    assert _raised_in(server.__traceback__) is func.__code__, f"server: {server}"
    assert fragment in str(cli) and fragment in str(server), (str(cli), str(server))


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    rgb = np.zeros((*HW, 3), np.uint8)
    mask = np.zeros(HW, np.uint8)
    mask[10:30, 10:40] = 255
    out = {"img": tmp_path / "img.png", "mask": tmp_path / "mask.png", "depth": tmp_path / "depth.png",
           "cam": tmp_path / "cam.json", "cam_cx": tmp_path / "cam_cx.json", "out": tmp_path / "out"}
    cv2.imwrite(str(out["img"]), rgb)
    cv2.imwrite(str(out["mask"]), mask)
    cv2.imwrite(str(out["depth"]), np.full(HW, 5000, np.uint16))
    cam = {"width": HW[1], "height": HW[0], "fx": 60.0, "fy": 60.0, "cx": 32.0, "cy": 24.0}
    out["cam"].write_text(json.dumps(cam))
    out["cam_cx"].write_text(json.dumps({**cam, "cx": -5000.0, "cy": 1e12}))
    out["out"].mkdir()
    return out


def _lift(f: dict[str, Path], cam: str = "cam", *extra: str) -> list[str]:
    return ["lift", "--color", str(f["img"]), "--depth", str(f["depth"]), "--intrinsics", str(f[cam]),
            "--mask", str(f["mask"]), "--out", str(f["out"] / "obj.ply"), *extra]


def test_intrinsics_far_principal_point(files: dict[str, Path]) -> None:
    cli = _cli_error(_lift(files, "cam_cx"))
    frame = encode_frame(0, np.zeros((*HW, 3), np.uint8), encoding="png", intrinsics=(60.0, 60.0, -5000.0, 1e12))
    server = _server_error(lambda: parse_frame(frame, Limits()), "bad_frame")
    _same_rule(cli, server, validate.intrinsics, "principal point (-5000, 1e+12) px is far outside the 64x48 image")


@pytest.mark.parametrize("box,fragment", [
    ([1000, 1000, 2000, 2000], "[1000.0, 1000.0, 2000.0, 2000.0] lies outside the 64x48 image"),
    ([10, 10, 10, 30], "[10.0, 10.0, 10.0, 30.0] has zero area"),
    ([30, 30, 10, 10], "corners must be top-left then bottom-right"),
])
def test_box(files: dict[str, Path], box: list[int], fragment: str) -> None:
    cli = _cli_error(["segment", str(files["img"]), "--out", str(files["out"] / "m.png"),
                      "--box", ",".join(map(str, box))])
    text = json.dumps({"type": "prompt", "frame_id": 3, "action": "add", "box": box})

    def server_checks() -> None:  # as the server does: the message as it arrives, then against its frame
        check_prompt_inside(parse_text(text, Limits()), HW)

    server = _server_error(server_checks, "bad_message")
    _same_rule(cli, server, validate.box_xyxy, fragment)


def test_depth_units(files: dict[str, Path]) -> None:
    cli = _cli_error(_lift(files, "cam", "--depth-scale-m", "1"))  # 5000 raw units at 1 metre per unit
    frame = encode_frame(0, np.zeros((*HW, 3), np.uint8), encoding="png", depth_raw=np.full(HW, 5000, np.uint16),
                         depth_scale_m=1.0, intrinsics=(60.0, 60.0, 32.0, 24.0))
    server = _server_error(lambda: parse_frame(frame, Limits()), "bad_frame")
    _same_rule(cli, server, validate.depth_units,
               "median depth 5000 raw units at 1 units per metre is 5000 m, outside 0.02..1000 m")


def test_depth_size(files: dict[str, Path], tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.full((24, 32), 1000, np.uint16))
    cli = _cli_error(_lift({**files, "depth": small}))
    depth = cv2.imencode(".png", np.full((24, 32), 1000, np.uint16))[1].tobytes()
    frame = encode_frame(0, np.zeros((*HW, 3), np.uint8), encoding="png")
    head, blob = unpack(frame)
    head["depth"] = {"encoding": "png16", "width": 32, "height": 24, "bytes": len(depth), "scale_m": 0.001}
    server = _server_error(lambda: parse_frame(pack(head, bytes(blob), depth), Limits()), "bad_frame")
    _same_rule(cli, server, validate.same_hw, "is 32x24 but")


def test_size_limit_maps_to_too_large() -> None:
    frame = encode_frame(0, np.zeros((20, 300, 3), np.uint8), encoding="rgb8")
    cause = _server_error(lambda: parse_frame(frame, Limits(max_image_side=256)), "too_large")
    assert isinstance(cause, validate.InputTooLarge) and "at most 256 px" in str(cause)
    wide = encode_frame(0, np.zeros((8, 200, 3), np.uint8), encoding="rgb8")  # 25:1, the CLI's aspect rule
    assert "aspect ratio" in str(_server_error(lambda: parse_frame(wide, Limits()), "bad_frame"))
