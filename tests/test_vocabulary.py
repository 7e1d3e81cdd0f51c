"""One vocabulary (docs/glossary.md): the retired CLI flags and field names still work for one release
with a DeprecationWarning, and the code itself uses the glossary names only."""

from __future__ import annotations

import argparse
import ast
import warnings
from pathlib import Path

import numpy as np
import pytest

from calibration.cli import GAZE_MAPPINGS
from engine.cli import build_parser
from engine.cli_common import DeprecatedFlag, keyframe_policy
from engine.deprecation import RETIRED
from engine.stream.correction import Candidate
from engine.stream.decoding import Decoded
from engine.stream.events import Prompt
from engine.stream.scheduler import KeyframePolicy
from engine.stream.tracker import TrackedObject

REPO = Path(__file__).resolve().parents[1]
INTRINSICS = "open3d_rgbd/redwood/camera_primesense.json"


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _parse_deprecated(argv: list[str], capsys: pytest.CaptureFixture, flag: str, use: str) -> argparse.Namespace:
    """Parse with a retired flag: it must warn (DeprecationWarning and one stderr line naming the new flag)."""
    with pytest.warns(DeprecationWarning, match=f"{flag} is deprecated.*use {use}"):
        args = _parse(argv)
    err = capsys.readouterr().err
    assert f"arsel: warning: {flag} is deprecated" in err and use in err
    return args


# ---------------------------------------------------------------------------------------- CLI flags
@pytest.mark.parametrize("verb", [["track", "synthetic:2", "--box", "1,2,3,4", "--out", "o"], ["serve"]])
@pytest.mark.parametrize("value,policy", [("auto", KeyframePolicy(mode="auto", interval=30)),
                                          ("3", KeyframePolicy(mode="interval", interval=3))])
def test_keyframe_flag_is_keyframe_interval(verb: list[str], value: str, policy: KeyframePolicy,
                                            capsys: pytest.CaptureFixture) -> None:
    new = _parse([*verb, "--keyframe-interval", value])
    old = _parse_deprecated([*verb, "--keyframe", value], capsys, "--keyframe", "--keyframe-interval")
    assert keyframe_policy(new) == keyframe_policy(old) == policy
    assert keyframe_policy(_parse(verb)) == KeyframePolicy(mode="interval", interval=5)


def test_keyframe_and_keyframe_interval_exclude_each_other(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        _parse(["serve", "--keyframe", "3", "--keyframe-interval", "4"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_fuse_device_is_o3d_device(capsys: pytest.CaptureFixture) -> None:
    base = ["fuse", "frames", "--poses", "t.log", "--intrinsics", "i.json", "--out", "m.ply"]
    assert _parse(base).o3d_device == "CPU:0"
    assert _parse([*base, "--o3d-device", "CUDA:0"]).o3d_device == "CUDA:0"
    assert _parse_deprecated([*base, "--device", "CUDA:0"], capsys, "--device", "--o3d-device").o3d_device == "CUDA:0"


def test_calibrate_gaze_model_is_mapping(capsys: pytest.CaptureFixture) -> None:
    base = ["calibrate", "gaze", "pairs.csv", "--out", "g.json"]
    assert _parse(base).mapping == "homography"
    assert _parse([*base, "--mapping", "poly2"]).mapping == "poly2"
    assert _parse_deprecated([*base, "--model", "poly2"], capsys, "--model", "--mapping").mapping == "poly2"
    with pytest.raises(SystemExit):
        _parse([*base, "--model", "affine"])  # the old flag keeps the choices
    assert "invalid choice: 'affine'" in capsys.readouterr().err


def test_gaze_mappings_match_the_fitter() -> None:
    from calibration.gaze import MODELS

    assert GAZE_MAPPINGS == MODELS


def test_depth_scale_is_the_inverse_of_depth_scale_m(data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from engine.lift.cli import _intrinsics

    base = ["lift", "--color", "c.png", "--depth", "d.png", "--intrinsics", str(data_dir / INTRINSICS),
            "--mask", "m.png", "--out", "o.ply"]
    assert _intrinsics(_parse(base)).depth_scale_m == pytest.approx(0.001)  # Open3D JSON: millimetres
    new = _intrinsics(_parse([*base, "--depth-scale-m", "0.0002"]))
    old = _intrinsics(_parse_deprecated([*base, "--depth-scale", "5000"], capsys, "--depth-scale", "--depth-scale-m"))
    assert new.depth_scale_m == pytest.approx(old.depth_scale_m) == pytest.approx(0.0002)


def test_depth_scale_given_in_metres_names_the_new_flag(data_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from engine.cli import main

    argv = ["lift", "--color", "c.png", "--depth", "d.png", "--intrinsics", str(data_dir / INTRINSICS),
            "--mask", "m.png", "--out", str(tmp_path / "o.ply"), "--depth-scale", "0.001"]
    with pytest.warns(DeprecationWarning):
        assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("arsel: warning: --depth-scale is deprecated")
    assert err[1] == ("arsel lift: error: --depth-scale is raw units per metre, got 0.001, which looks like metres "
                      "per unit; pass --depth-scale-m 0.001") and len(err) == 2


def test_every_retired_flag_is_marked_in_help_and_docs() -> None:
    from tests.test_docs_cli import DOC, doc_sections, walk

    sections = doc_sections(DOC.read_text())
    found = []
    for verb, parser in walk(build_parser()):
        for action in parser._actions:
            if isinstance(action, DeprecatedFlag):
                flag = action.option_strings[0]
                found.append(f"{verb} {flag}")
                assert action.help.startswith(f"deprecated, use {action.use}")
                rows = [line for line in sections[verb].splitlines() if line.startswith(f"| `{flag} ")]
                assert rows and "deprecated" in rows[0] and f"`{action.use}" in rows[0], f"docs/cli.md, {verb} {flag}"
    assert sorted(found) == ["arsel calibrate gaze --model", "arsel fuse --depth-scale", "arsel fuse --device",
                             "arsel lift --depth-scale", "arsel serve --keyframe", "arsel track --keyframe"]


# ---------------------------------------------------------------------------------------- fields
def _decoded() -> Decoded:
    return Decoded(np.zeros((4, 4), np.float32), np.ones((2, 2), np.float32), 0.75, 1.5, 2.5)


@pytest.mark.parametrize("owner,old,new", [
    (_decoded, "low_res", "low_res_logits"),
    (_decoded, "decoder_ms", "decode_ms"),
    (_decoded, "upsample_ms", "postprocess_ms"),
    (lambda: Candidate(np.zeros((2, 2), bool), 0.5, np.ones((2, 2), np.float32), None), "low_res", "low_res_logits"),
    (lambda: TrackedObject(1, Prompt.box([1, 2, 3, 4]), low_res_logits=np.ones(2, np.float32)), "low_res",
     "low_res_logits"),
])
def test_renamed_field_alias_warns_and_reads_the_same(owner, old: str, new: str) -> None:
    obj = owner()
    with pytest.warns(DeprecationWarning, match=f"{type(obj).__name__}.{old} is deprecated.*use "
                                                f"{type(obj).__name__}.{new}"):
        value = getattr(obj, old)
    assert value is getattr(obj, new)


def test_mutable_alias_writes_the_new_field() -> None:
    obj = TrackedObject(1, Prompt.box([1, 2, 3, 4]))
    arr = np.zeros((256, 256), np.float32)
    with pytest.warns(DeprecationWarning):
        obj.low_res = arr
    assert obj.low_res_logits is arr


# ---------------------------------------------------------------------------------------- the code
CONTRACT_PLACES = ("engine/models/", "engine/export/", "engine/reference/", "trt/", "engine/contract.py")
CONTRACT_NAMES = {"image_embeddings", "iou_predictions", "low_res_masks"}  # SAM's ONNX tensor names
RETIRED_FLAGS = {"--keyframe", "--depth-scale"}
# Where a retired flag may still be written: the conversion of the deprecated --depth-scale.
FLAG_SHIMS = {("engine/lift/cli.py", "_intrinsics")}


def _names(tree: ast.AST) -> list[tuple[int, str, str]]:
    """(line, name, enclosing function) of every identifier, parameter, definition and string constant."""
    out: list[tuple[int, str, str]] = []

    def visit(node: ast.AST, func: str, shim: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = node.name
        if isinstance(node, ast.Call):
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            shim = shim or callee in ("renamed_field", "add_deprecated_flag")
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                getattr(node.value.func, "id", "") == "renamed_field":
            return  # `old = renamed_field("new", "old")`: the alias itself
        name = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                else node.arg if isinstance(node, ast.arg)
                else node.name if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                else node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None)
        if name is not None and not shim:
            out.append((getattr(node, "lineno", 0), name, func))
        for child in ast.iter_child_nodes(node):
            visit(child, func, shim)

    visit(tree, "", False)
    return out


def test_the_code_uses_no_retired_name() -> None:
    bad = []
    for folder in ("engine", "trt", "calibration", "bench", "demos", "scripts"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel == "engine/deprecation.py":
                continue
            for line, name, func in _names(ast.parse(path.read_text(encoding="utf-8"))):
                if name in RETIRED:
                    bad.append(f"{rel}:{line}: {name} (use {RETIRED[name]})")
                elif name in CONTRACT_NAMES and not rel.startswith(CONTRACT_PLACES):
                    bad.append(f"{rel}:{line}: {name} is an ONNX tensor name; outside the contract say "
                               "features / scores / low_res_logits")
                elif name in RETIRED_FLAGS and (rel, func) not in FLAG_SHIMS:
                    bad.append(f"{rel}:{line}: the retired flag {name}")
    assert not bad, "retired names (docs/glossary.md) outside the alias shims:\n" + "\n".join(bad)


def test_the_scan_finds_a_retired_name() -> None:
    tree = ast.parse("def f(low_res):\n    x.decoder_ms = 1\n    low_res = renamed_field('low_res_logits', 'low_res')\n"
                     "    p.add_argument('--keyframe')\n    add_deprecated_flag(p, '--keyframe')\n")
    found = [(line, name) for line, name, _ in _names(tree) if name in RETIRED or name in RETIRED_FLAGS]
    assert found == [(1, "low_res"), (2, "decoder_ms"), (4, "--keyframe")]
