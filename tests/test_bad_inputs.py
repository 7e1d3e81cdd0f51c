"""The bad-input table: every verb of ``arsel`` against hostile-but-ordinary input.

Each row is a command line (``{name}`` = a file of ``tests/bad_input_kit.py``, ``{o}`` = an empty
output folder), the expected exit code and a fragment of the expected message. Every row also
asserts that no traceback was printed, that ``{o}`` is still empty afterwards (no partial output)
and that no model was built (every input is checked before the model loads; the rows about the
checkpoint itself are the exception and say so).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.bad_input_kit import build_kit, leftovers, run_cli


@dataclass(frozen=True)
class Row:
    id: str
    argv: str
    code: int
    fragment: str
    checkpoint_row: bool = False  # reads a checkpoint (but must still fail before building the model)


SEG = "segment {img_png} --out {o}/m.png"
EV = "everything {img_png} --out {o}/ev"
TR = "track {frames} --out {o}/t"
LIFT = "lift --color {img_png} --depth {depth_png} --intrinsics {cam_json} --out {o}/obj.ply"
FUSE = "fuse {rgbd} --poses {rgbd}/traj.log --intrinsics {cam_json} --out {o}/mesh.ply"
CALI = "calibrate intrinsics {img_png} --size 9x6 --square-m 0.025 --out {o}/cam.json"
CALG = "calibrate gaze {pairs_nan_csv} --out {o}/g.json"

ROWS = [
    # ---------------------------------------------------------------- segment
    Row("seg-no-prompt", SEG, 2, "give a prompt"),
    Row("seg-box-3-values", SEG + " --box 1,2,3", 2, "--box"),
    Row("seg-box-words", SEG + " --box a,b,c,d", 2, "comma-separated numbers"),
    Row("seg-box-nan", SEG + " --box nan,0,10,10", 2, "finite"),
    Row("seg-box-inf", SEG + " --box 0,0,inf,10", 2, "finite"),
    Row("seg-box-zero-area", SEG + " --box 10,10,10,20", 2, "zero area"),
    Row("seg-box-inverted", SEG + " --box 30,30,10,10", 2, "X0 < X1"),
    Row("seg-box-outside", SEG + " --box 1000,1000,2000,2000", 2, "outside"),
    Row("seg-box-negative-outside", SEG + " --box=-500,-500,-100,-100", 2, "outside"),
    Row("seg-point-outside", SEG + " --point 1000,1000", 2, "outside"),
    Row("seg-point-negative", SEG + " --point=-1,5", 2, "outside"),
    Row("seg-point-right-edge", SEG + " --point 64,5", 2, "outside"),  # x == W: past the last pixel
    Row("seg-box-right-of-image", SEG + " --box 64,0,80,10", 2, "outside"),
    Row("seg-point-nan", SEG + " --point nan,5", 2, "finite"),
    Row("seg-point-label", SEG + " --point 5,5,2", 2, "LABEL"),
    Row("seg-point-one-value", SEG + " --point 5", 2, "--point"),
    Row("seg-image-missing", "segment {kit}/nope.png --out {o}/m.png --box 1,1,9,9", 2, "not found"),
    Row("seg-image-junk", "segment {junk_png} --out {o}/m.png --box 1,1,9,9", 2, "cannot decode"),
    Row("seg-image-empty", "segment {empty_png} --out {o}/m.png --box 1,1,9,9", 2, "empty"),
    Row("seg-image-trunc-png", "segment {trunc_png} --out {o}/m.png --box 1,1,9,9", 2, "truncated"),
    Row("seg-image-trunc-jpg", "segment {trunc_jpg} --out {o}/m.png --box 1,1,9,9", 2, "truncated"),
    Row("seg-image-aspect", "segment {wide_png} --out {o}/m.png --box 1,0,9,1", 2, "aspect ratio"),
    Row("seg-image-folder", "segment {kit} --out {o}/m.png --box 1,1,9,9", 2, "folder"),
    Row("seg-sample-unknown", "segment sample:dog --out {o}/m.png --box 1,1,9,9", 2, "unknown sample"),
    Row("seg-out-txt", SEG.replace("m.png", "m.txt") + " --box 1,1,9,9", 2, "--out"),
    Row("seg-out-no-ext", SEG.replace("m.png", "mask") + " --box 1,1,9,9", 2, "--out"),
    Row("seg-out-dir", "segment {img_png} --out {adir_png} --box 1,1,9,9", 2, "folder"),
    Row("seg-out-parent-file", "segment {img_png} --out {afile_txt}/m.png --box 1,1,9,9", 2, "not a folder"),
    Row("seg-overlay-txt", SEG + " --box 1,1,9,9 --overlay {o}/x.txt", 2, "--overlay"),
    Row("seg-logits-png", SEG + " --box 1,1,9,9 --logits {o}/l.png", 2, ".npy"),
    Row("seg-json-txt", SEG + " --box 1,1,9,9 --json {o}/r.txt", 2, ".json"),
    Row("seg-json-dir", SEG + " --box 1,1,9,9 --json {adir_json}", 2, "folder"),
    Row("seg-json-parent-file", SEG + " --box 1,1,9,9 --json {afile_txt}/r.json", 2, "not a folder"),
    Row("seg-model-unknown", SEG + " --box 1,1,9,9 --model nosuch", 2, "nosuch"),
    Row("seg-backend-bad", SEG + " --box 1,1,9,9 --backend cuda", 2, "invalid choice"),
    Row("seg-ckpt-missing", SEG + " --box 1,1,9,9 --checkpoint {kit}/none.pth", 2, "does not exist"),
    Row("seg-ckpt-junk", SEG + " --box 1,1,9,9 --checkpoint {junk_pth}", 2, "not a valid checkpoint", True),
    Row("seg-ckpt-pickle", SEG + " --box 1,1,9,9 --checkpoint {pickle_pth}", 2, "not a valid checkpoint", True),
    Row("seg-ckpt-nan", SEG + " --box 1,1,9,9 --checkpoint {nan_pth} --json {o}/r.json", 2, "not finite", True),
    # ---------------------------------------------------------------- everything
    Row("ev-pps-zero", EV + " --points-per-side 0", 2, "--points-per-side"),
    Row("ev-pps-negative", EV + " --points-per-side -3", 2, "--points-per-side"),
    Row("ev-pps-huge", EV + " --points-per-side 100000", 2, "--points-per-side"),
    Row("ev-pps-word", EV + " --points-per-side many", 2, "invalid int"),
    Row("ev-image-missing", "everything {kit}/nope.png --out {o}/ev", 2, "not found"),
    Row("ev-image-aspect", "everything {wide_png} --out {o}/ev", 2, "aspect ratio"),
    Row("ev-image-trunc", "everything {trunc_png} --out {o}/ev", 2, "truncated"),
    Row("ev-out-file", "everything {img_png} --out {afile_txt}", 2, "not a folder"),
    Row("ev-out-parent-file", "everything {img_png} --out {afile_txt}/ev", 2, "not a folder"),
    # ---------------------------------------------------------------- weights fetch
    Row("wf-unknown", "weights fetch nosuch --dir {o}/w", 2, "nosuch"),
    Row("wf-dir-file", "weights fetch sam_vit_b --dir {afile_txt}", 2, "not a folder"),
    # ---------------------------------------------------------------- export / build-engine
    Row("ex-opset-low", "export lite_medsam --out {o}/x --opset 3", 2, "--opset"),
    Row("ex-opset-high", "export lite_medsam --out {o}/x --opset 1000", 2, "--opset"),
    Row("ex-model-unknown", "export nosuch --out {o}/x", 2, "nosuch"),
    Row("ex-out-file", "export lite_medsam --out {afile_txt}", 2, "not a folder"),
    Row("ex-ckpt-missing", "export lite_medsam --out {o}/x --checkpoint {kit}/none.pth", 2, "does not exist"),
    Row("be-model-unknown", "build-engine nosuch --out {o}/e", 2, "nosuch"),
    Row("be-no-tensorrt", "build-engine lite_medsam --out {o}/e", 2, "TensorRT"),
    Row("be-out-file", "build-engine lite_medsam --out {afile_txt}", 2, "not a folder"),
    Row("be-int8-missing", "build-engine lite_medsam --out {o}/e --int8 {kit}/none", 2, "--int8"),
    # ---------------------------------------------------------------- track
    Row("tr-no-prompt", TR, 2, "give one kind of prompt"),
    Row("tr-two-kinds", TR + " --box 1,1,9,9 --point 3,3", 2, "give one kind of prompt"),
    Row("tr-box-outside", TR + " --box 100,100,200,200", 2, "outside"),
    Row("tr-box-zero-area", TR + " --box 10,10,30,10", 2, "zero area"),
    Row("tr-box-nan", TR + " --box nan,1,9,9", 2, "finite"),
    Row("tr-point-outside", TR + " --point 500,5", 2, "outside"),
    Row("tr-point-nan", TR + " --point 5,nan", 2, "finite"),
    Row("tr-source-missing", "track {kit}/nope.mp4 --out {o}/t --box 1,1,9,9", 2, "source"),
    Row("tr-source-junk", "track {junk_png} --out {o}/t --box 1,1,9,9", 2, "junk.png"),
    Row("tr-source-synthetic-bad", "track synthetic:0 --out {o}/t --box 1,1,9,9", 2, "synthetic:N"),
    Row("tr-roi-inf", TR + " --box 1,1,9,9 --roi-margin inf", 2, "--roi-margin"),
    Row("tr-roi-nan", TR + " --box 1,1,9,9 --roi-margin nan", 2, "--roi-margin"),
    Row("tr-roi-negative", TR + " --box 1,1,9,9 --roi-margin -1", 2, "--roi-margin"),
    Row("tr-gaze-offset-inf", TR + " --gaze {gaze_off_csv} --gaze-offset-ms inf", 2, "--gaze-offset-ms"),
    Row("tr-gaze-offset-nan", TR + " --gaze {gaze_off_csv} --gaze-offset-ms nan", 2, "--gaze-offset-ms"),
    Row("tr-reuse-nan", TR + " --box 1,1,9,9 --reuse-decode-px nan", 2, "--reuse-decode-px"),
    Row("tr-reuse-negative", TR + " --box 1,1,9,9 --reuse-decode-px -1", 2, "--reuse-decode-px"),
    Row("tr-keyframe-zero", TR + " --box 1,1,9,9 --keyframe-interval 0", 2, "--keyframe-interval"),
    Row("tr-keyframe-word", TR + " --box 1,1,9,9 --keyframe-interval sometimes", 2, "--keyframe-interval"),
    Row("tr-max-frames-zero", TR + " --box 1,1,9,9 --max-frames 0", 2, "--max-frames"),
    Row("tr-threads-zero", TR + " --box 1,1,9,9 --threads 0", 2, "--threads"),
    Row("tr-motion-bad", TR + " --box 1,1,9,9 --motion warp", 2, "invalid choice"),
    Row("tr-gaze-missing", TR + " --gaze {kit}/nope.csv", 2, "not found"),
    Row("tr-gaze-junk", TR + " --gaze {gaze_junk_csv}", 2, "gaze_junk.csv"),
    Row("tr-gaze-header", TR + " --gaze {gaze_header_csv}", 2, "header"),
    Row("tr-gaze-order", TR + " --gaze {gaze_order_csv}", 2, "increase"),
    Row("tr-gaze-all-off-frame", TR + " --gaze {gaze_off_csv}", 2, "off-frame"),
    Row("tr-gaze-normalized-pixels", TR + " --gaze {gaze_norm_px_csv}", 2, "normalized"),
    Row("tr-out-file", "track {frames} --out {afile_txt} --box 1,1,9,9", 2, "not a folder"),
    Row("tr-model-unknown", TR + " --box 1,1,9,9 --model nosuch", 2, "nosuch"),
    Row("tr-ckpt-nan", TR + " --box 1,1,9,9 --checkpoint {nan_pth}", 2, "not finite", True),
    # ---------------------------------------------------------------- lift
    Row("lf-no-selection", LIFT, 2, "give a selection"),
    Row("lf-mask-and-box", LIFT + " --mask {mask_png} --box 1,1,9,9", 2, "not both"),
    Row("lf-out-txt", LIFT.replace("obj.ply", "obj.txt") + " --mask {mask_png}", 2, ".ply"),
    Row("lf-out-dir", LIFT.replace("{o}/obj.ply", "{adir_ply}") + " --mask {mask_png}", 2, "folder"),
    Row("lf-mesh-txt", LIFT + " --mask {mask_png} --mesh {o}/m.txt", 2, "--mesh"),
    Row("lf-json-parent-file", LIFT + " --mask {mask_png} --json {afile_txt}/r.json", 2, "not a folder"),
    Row("lf-json-txt", LIFT + " --mask {mask_png} --json {o}/r.txt", 2, ".json"),
    Row("lf-erode-huge", LIFT + " --mask {mask_png} --erode-px 100000", 2, "--erode-px"),
    Row("lf-erode-negative", LIFT + " --mask {mask_png} --erode-px -1", 2, "--erode-px"),
    Row("lf-edge-gap-negative", LIFT + " --mask {mask_png} --edge-gap-m -0.01", 2, "--edge-gap-m"),
    Row("lf-edge-gap-nan", LIFT + " --mask {mask_png} --edge-gap-m nan", 2, "--edge-gap-m"),
    Row("lf-max-depth-nan", LIFT + " --mask {mask_png} --max-depth-m nan", 2, "--max-depth-m"),
    Row("lf-max-depth-inf", LIFT + " --mask {mask_png} --max-depth-m inf", 2, "--max-depth-m"),
    Row("lf-depth-scale-nan", LIFT + " --mask {mask_png} --depth-scale-m nan", 2, "--depth-scale-m"),
    Row("lf-depth-scale-zero", LIFT + " --mask {mask_png} --depth-scale-m 0", 2, "--depth-scale-m"),
    Row("lf-depth-scale-inf", LIFT + " --mask {mask_png} --depth-scale-m inf", 2, "--depth-scale-m"),
    Row("lf-depth-metres", LIFT.replace("{depth_png}", "{depth_m_tiff}") + " --mask {mask_png}", 2, "metres"),
    Row("lf-depth-8bit", LIFT.replace("{depth_png}", "{depth8_png}") + " --mask {mask_png}", 2, "8-bit"),
    Row("lf-depth-channels", LIFT.replace("{depth_png}", "{depth_rgb16_png}") + " --mask {mask_png}", 2, "channels"),
    Row("lf-depth-km", LIFT.replace("{depth_png}", "{depth_far_png}") + " --mask {mask_png} --depth-scale-m 1", 2,
        "outside 0.02..1000 m"),
    Row("lf-depth-size", LIFT.replace("{depth_png}", "{depth_small_png}") + " --mask {mask_png}", 2, "intrinsics"),
    Row("lf-depth-missing", LIFT.replace("{depth_png}", "{kit}/no.png") + " --mask {mask_png}", 2, "not found"),
    Row("lf-depth-junk", LIFT.replace("{depth_png}", "{junk_png}") + " --mask {mask_png}", 2, "cannot decode"),
    Row("lf-intr-principal", LIFT.replace("{cam_json}", "{cam_cx_json}") + " --mask {mask_png}", 2, "principal"),
    Row("lf-intr-focal", LIFT.replace("{cam_json}", "{cam_f_json}") + " --mask {mask_png}", 2, "focal"),
    Row("lf-intr-fneg", LIFT.replace("{cam_json}", "{cam_fneg_json}") + " --mask {mask_png}", 2, "focal"),
    Row("lf-intr-nan", LIFT.replace("{cam_json}", "{cam_nan_json}") + " --mask {mask_png}", 2, "fx"),
    Row("lf-intr-junk", LIFT.replace("{cam_json}", "{cam_junk_json}") + " --mask {mask_png}", 2, "cam_junk.json"),
    Row("lf-intr-list", LIFT.replace("{cam_json}", "{cam_list_json}") + " --mask {mask_png}", 2, "object"),
    Row("lf-intr-keys", LIFT.replace("{cam_json}", "{cam_keys_json}") + " --mask {mask_png}", 2, "missing field"),
    Row("lf-point-outside", LIFT + " --point 500,5", 2, "outside"),
    Row("lf-box-outside", LIFT + " --box 100,100,200,200", 2, "outside"),
    Row("lf-box-zero-area", LIFT + " --box 10,10,10,30", 2, "zero area"),
    Row("lf-box-nan", LIFT + " --box 1,nan,9,9", 2, "finite"),
    Row("lf-mask-size", LIFT + " --mask {depth_small_png}", 2, "resize"),
    # ---------------------------------------------------------------- fuse
    Row("fu-frames-missing", FUSE.replace("{rgbd} ", "{kit}/none "), 2, "not found"),
    Row("fu-every-zero", FUSE + " --every 0", 2, "--every"),
    Row("fu-voxel-nan", FUSE + " --voxel-m nan", 2, "--voxel-m"),
    Row("fu-voxel-inf", FUSE + " --voxel-m inf", 2, "--voxel-m"),
    Row("fu-voxel-tiny", FUSE + " --voxel-m 1e-9", 2, "--voxel-m"),
    Row("fu-trunc-nan", FUSE + " --trunc-m nan", 2, "--trunc-m"),
    Row("fu-max-depth-nan", FUSE + " --max-depth-m nan", 2, "--max-depth-m"),
    Row("fu-out-txt", FUSE.replace("mesh.ply", "mesh.txt"), 2, "--out"),
    Row("fu-cloud-txt", FUSE + " --cloud {o}/c.txt", 2, "--cloud"),
    Row("fu-pose-nan", FUSE.replace("traj.log", "traj_nan.log"), 2, "not finite"),
    Row("fu-pose-not-rigid", FUSE.replace("traj.log", "traj_scaled.log"), 2, "not a rigid"),
    Row("fu-pose-count", FUSE.replace("traj.log", "traj_short.log"), 2, "poses"),
    Row("fu-intr-principal", FUSE.replace("{cam_json}", "{cam_cx_json}"), 2, "principal"),
    Row("fu-json-parent-file", FUSE + " --json {afile_txt}/r.json", 2, "not a folder"),
    # ---------------------------------------------------------------- calibrate
    Row("ci-square-nan", CALI.replace("0.025", "nan"), 2, "--square-m"),
    Row("ci-square-inf", CALI.replace("0.025", "inf"), 2, "--square-m"),
    Row("ci-size-small", CALI.replace("9x6", "1x1"), 2, "--size"),
    Row("ci-size-word", CALI.replace("9x6", "big"), 2, "--size"),
    Row("ci-images-missing", CALI.replace("{img_png}", "{kit}/no.png"), 2, "not found"),
    Row("ci-out-txt", CALI.replace("cam.json", "cam.txt"), 2, ".json"),
    Row("ci-max-err-nan", CALI + " --max-image-error-px nan", 2, "--max-image-error-px"),
    Row("cg-samples-missing", "calibrate gaze {kit}/no.csv --out {o}/g.json", 2, "not found"),
    Row("cg-samples-junk", "calibrate gaze {pairs_junk_csv} --out {o}/g.json", 2, "pairs_junk.csv"),
    Row("cg-samples-nan", CALG, 2, "pairs_nan.csv"),
    Row("cg-ransac-nan", CALG + " --ransac-px nan", 2, "--ransac-px"),
    Row("cg-out-dir", "calibrate gaze {pairs_nan_csv} --out {adir_json}", 2, "folder"),
    # ---------------------------------------------------------------- demo
    Row("de-frames-one", "demo --out {o}/d --frames 1", 2, "--frames"),
    Row("de-keyframe-zero", "demo --out {o}/d --keyframe-interval 0", 2, "--keyframe-interval"),
    Row("de-bag-missing", "demo --out {o}/d --bag {kit}/none.bag", 2, "--bag"),
    Row("de-out-file", "demo --out {afile_txt}", 2, "not a folder"),
    Row("de-trt-cpu", "demo --out {o}/d --backend tensorrt", 2, "CUDA"),
    # ---------------------------------------------------------------- the command line itself
    Row("cli-unknown-verb", "frobnicate", 2, "invalid choice"),
    Row("cli-no-verb", "", 2, "required"),
]


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return build_kit(tmp_path_factory.mktemp("kit"))


class ModelBuilt(AssertionError):
    """Raised when a row builds a model: every row's input is checked before that."""


@pytest.fixture()
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.models.registry as registry

    def refuse(*_: object, **__: object) -> None:
        raise ModelBuilt("a model was built before the bad input was refused")

    monkeypatch.setattr(registry, "build_model", refuse)


def argv_of(row: Row, kit: dict[str, str], out: Path) -> list[str]:
    return [a.format(o=out, **kit) for a in row.argv.split()]


def test_table_is_large_and_covers_every_verb() -> None:
    verbs = {r.argv.split()[0] for r in ROWS if r.argv}
    assert len(ROWS) >= 80 and len({r.id for r in ROWS}) == len(ROWS)
    assert {"segment", "everything", "weights", "export", "build-engine", "track", "lift", "fuse",
            "calibrate", "demo"} <= verbs


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, kit: dict[str, str], tmp_path: Path, no_model: None) -> None:
    out = tmp_path / "out"
    out.mkdir()
    before = leftovers(Path(kit["kit"]))
    res = run_cli(argv_of(row, kit, out))
    assert "Traceback" not in res.text, res.text[-3000:]
    assert res.code == row.code, res.text[-2000:]
    assert row.fragment.lower() in res.text.lower(), res.text[-2000:]
    assert "weights_only=False" not in res.text
    assert leftovers(out) == [], "partial output left"
    assert leftovers(Path(kit["kit"])) == before, "files written beside the inputs"


# ---------------------------------------------------------------- the guard in main()
@pytest.fixture()
def crashing_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """``arsel models`` raising an exception no verb expects (a bug)."""
    import engine.models.registry as registry

    class Boom(dict):
        def values(self):  # noqa: ANN202
            raise KeyError("boom")

    monkeypatch.setattr(registry, "REGISTRY", Boom())


def test_unexpected_error_is_one_line_with_a_debug_hint(crashing_models: None) -> None:
    res = run_cli(["models"])
    assert res.code == 1 and "Traceback" not in res.text
    lines = [ln for ln in res.text.splitlines() if "internal error" in ln]
    assert len(lines) == 1 and "KeyError" in lines[0] and "--debug" in lines[0]


def test_debug_shows_the_traceback(crashing_models: None) -> None:
    res = run_cli(["--debug", "models"])
    assert res.code is None and "Traceback" in res.text and "KeyError" in res.text


def test_debug_shows_the_traceback_of_a_usage_error(tmp_path: Path) -> None:
    res = run_cli(["--debug", "segment", "sample:dog", "--out", str(tmp_path / "m.png"), "--box", "1,1,9,9"])
    assert res.code is None and "Traceback" in res.text and "unknown sample" in res.text
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- demos: live gaze ports
def _live_select():  # noqa: ANN202
    import sys

    demos = Path(__file__).resolve().parents[1] / "demos"
    sys.path.insert(0, str(demos))
    try:
        return __import__("live_select")
    finally:
        sys.path.remove(str(demos))


@pytest.mark.parametrize("spec,fragment", [("udp:99999", "port"), ("udp:busy", "cannot bind"),
                                           ("udp:1:2:3", "bad live gaze source")])
def test_live_select_bad_or_busy_port_is_one_line(spec: str, fragment: str, no_model: None,
                                                  capsys: pytest.CaptureFixture) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        spec = spec.replace("busy", str(busy.getsockname()[1]))
        code = _live_select().main(["--headless", "--frames", "2", "--gaze-live", spec])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_live_gaze_off_frame_never_selects() -> None:
    from engine.gaze import GazeSample
    from engine.stream.prompt_sources import GazePrompts

    prompts = GazePrompts(frame_hw=(48, 64))
    events = [e for k in range(200) for e in prompts.push(GazeSample(k * 10**7, 5000.0, 5000.0, 1.0))]
    assert events == [] and prompts.off_frame == 200
    on = [e for k in range(200, 400) for e in prompts.push(GazeSample(k * 10**7, 30.0, 20.0, 1.0))]
    assert on, "gaze back on the frame dwells and selects again"
