"""Real browser: the page at ``GET /`` in headless Chromium against ``arsel serve`` (LiteMedSAM).

Chromium's fake camera plays a Y4M clip written at test time from real DAVIS blackswan frames
(640x480, played forward then back so it loops without a jump; the track label names the clip).
The tests drag a box around the swan, click, shift-click, use the pointer as gaze, remove and clear,
tap and touch-drag in a phone-sized window, and check what the page drew against what the server
sent: the mask layer's pixels against the result's COCO RLE decoded by pycocotools (IoU >= 0.95,
over the very frame the result names), the HUD's round trip, and every prompt against the arsel.v1
schema. One module-scoped server and browser serve all tests; the screenshot lands in tmp_path.
Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and selenium; skips
with the reason where they are missing, except in CI (``ARSEL_REQUIRE_DATA=1``), where it fails.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from engine.serve.protocol import check

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CLIP_HW = (480, 640)
CLIP_FRAMES = 20  # blackswan 0..19, then 18..1: a seamless loop
CLIP_FPS = 4  # slow enough that consecutive frames the page sends differ by a frame or two under load
WINDOW_WH = (900, 900)  # new headless: the viewport is ~143 px shorter than the window
TOKEN = "browser-test-token"
pytestmark = pytest.mark.slow


def _need(ok: bool, reason: str) -> None:
    """Skip with ``reason`` where something is missing; in CI (ARSEL_REQUIRE_DATA=1) fail instead."""
    if ok:
        return
    if os.environ.get("ARSEL_REQUIRE_DATA") == "1":
        pytest.fail(f"{reason} (CI installs it: .ci/run)")
    pytest.skip(reason)


# ---------------------------------------------------------------------------- the fake camera clip
@dataclass(frozen=True)
class Clip:
    path: Path
    frames_rgb: list[np.ndarray]  # (480, 640, 3) uint8 per blackswan frame 0..CLIP_FRAMES-1
    gt_masks: list[np.ndarray]  # (480, 640) bool per blackswan frame

    def index_of(self, rgb: np.ndarray) -> tuple[int, float]:
        """The blackswan frame an (480, 640, 3) RGB image shows, and its mean absolute difference."""
        small = cv2.resize(rgb, (160, 120), interpolation=cv2.INTER_AREA).astype(np.float32)
        diffs = [float(np.abs(small - cv2.resize(f, (160, 120), interpolation=cv2.INTER_AREA)).mean())
                 for f in self.frames_rgb]
        best = int(np.argmin(diffs))
        return best, diffs[best]

    def box_xyxy(self, index: int, pad: float) -> tuple[float, float, float, float]:
        """The ground-truth box of the swan in frame ``index``, ``pad`` pixels larger, inside the image."""
        ys, xs = np.nonzero(self.gt_masks[index])
        return (max(xs.min() - pad, 0.0), max(ys.min() - pad, 0.0),
                min(xs.max() + pad, CLIP_HW[1] - 1.0), min(ys.max() + pad, CLIP_HW[0] - 1.0))


def write_y4m(path: Path, frames_bgr: list[np.ndarray], fps: int) -> None:
    """A 4:2:0 Y4M (``C420jpeg``) that Chromium's fake camera plays exactly, looping."""
    h, w = frames_bgr[0].shape[:2]
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for bgr in frames_bgr:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).tobytes())


@pytest.fixture(scope="module")
def clip(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Clip:
    root = data_dir / "davis_blackswan"
    order = list(range(CLIP_FRAMES)) + list(range(CLIP_FRAMES - 2, 0, -1))
    size_wh = (CLIP_HW[1], CLIP_HW[0])
    frames, masks = {}, {}
    for i in range(CLIP_FRAMES):
        bgr = cv2.imread(str(root / "JPEGImages" / f"{i:05d}.jpg"), cv2.IMREAD_COLOR)
        gt = cv2.imread(str(root / "Annotations" / f"{i:05d}.png"), cv2.IMREAD_GRAYSCALE)
        if bgr is None or gt is None:
            pytest.fail(f"blackswan frame {i} missing under {root}")
        frames[i] = cv2.resize(bgr, size_wh, interpolation=cv2.INTER_AREA)
        masks[i] = cv2.resize((gt > 0).astype(np.uint8), size_wh, interpolation=cv2.INTER_NEAREST) > 0
    path = tmp_path_factory.mktemp("clip") / "blackswan_640x480.y4m"
    write_y4m(path, [frames[i] for i in order], CLIP_FPS)
    return Clip(path, [cv2.cvtColor(frames[i], cv2.COLOR_BGR2RGB) for i in range(CLIP_FRAMES)],
                [masks[i] for i in range(CLIP_FRAMES)])


# ---------------------------------------------------------------------------- the real server
class ServerProcess:
    """``arsel serve`` started in a subprocess; ``url`` waits (once) until ``/healthz`` answers, so the
    model loads while the clip is written and Chromium starts."""

    def __init__(self, cmd: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w+")
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The page URL ``arsel serve`` prints (``http://127.0.0.1:PORT/?token=...``)."""
        if self._url is None:
            self._url = self._wait_for_url(timeout_s=120.0)
        return self._url

    @property
    def base(self) -> str:
        return self.url.split("?")[0]

    def _wait_for_url(self, timeout_s: float) -> str:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                pytest.fail(f"arsel serve exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            m = re.search(r"open (http://127\.0\.0\.1:\d+/\S*)", self.log_path.read_text())
            if m:
                try:
                    with urllib.request.urlopen(m.group(1).split("?")[0] + "healthz", timeout=2) as r:
                        if json.load(r)["status"] == "ok":
                            return m.group(1)
                except OSError:
                    pass
            time.sleep(0.2)
        pytest.fail(f"arsel serve did not come up in {timeout_s:.0f} s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> str:
        """Stop the server; returns its log."""
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()
        return self.log_path.read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``arsel serve`` (LiteMedSAM, torch, a token) on 127.0.0.1 and a free port.

    Synchronous keyframes: on two busy cores the async encoder can leave the embedding tens of frames
    old, and the masks then say more about the tracker than about the page."""
    _need(importlib.util.find_spec("fastapi") is not None and importlib.util.find_spec("uvicorn") is not None,
          "fastapi/uvicorn not installed (pip install 'arsel[serve]')")
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1", "--port", "0",
           "--model", "lite_medsam", "--backend", "torch", "--token", TOKEN, "--idle-timeout", "120", "--sync-encoder"]
    srv = ServerProcess(cmd, tmp_path_factory.mktemp("server") / "serve.log")
    try:
        yield srv
    finally:
        log = srv.stop()
    assert "Traceback" not in log, f"the server logged an exception:\n{log[-3000:]}"


# ---------------------------------------------------------------------------- the browser
@pytest.fixture(scope="module")
def browser(clip: Clip) -> Iterator[Any]:
    """Headless Chromium with the clip as its camera; its profile and temp files in a deleted folder."""
    _need(CHROMIUM.exists() and CHROMEDRIVER.exists(),
          f"{CHROMIUM} / {CHROMEDRIVER} not installed (apt-get install chromium chromium-driver)")
    _need(importlib.util.find_spec("selenium") is not None, "selenium not installed (pip install 'arsel[test]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    home = Path(tempfile.mkdtemp(prefix="arsel-chromium-"))
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WINDOW_WH[0]},{WINDOW_WH[1]}", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={clip.path}",
                f"--user-data-dir={home / 'profile'}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    env = {**os.environ, "TMPDIR": str(home), "XDG_CONFIG_HOME": str(home), "XDG_CACHE_HOME": str(home),
           "HOME": str(home)}
    driver = None
    try:
        driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER), env=env))
        driver.set_script_timeout(30)
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(home, ignore_errors=True)


def wait_for(driver: Any, script: str, what: str, timeout_s: float = 30.0, *args: Any) -> Any:
    """Poll ``script`` (JS returning a value) until it is truthy; fail naming ``what`` after ``timeout_s``."""
    t0 = time.monotonic()
    value = None
    while time.monotonic() - t0 < timeout_s:
        value = driver.execute_script(script, *args)
        if value:
            return value
        time.sleep(0.1)
    logs = [e["message"] for e in driver.get_log("browser")][-20:]
    state = driver.execute_script(
        "return {status: document.getElementById('status').textContent, selected: arsel.ui.selectedId, "
        "pending: arsel.ui.pendingAdd, errors: arsel.ui.errors, results: arsel.session.stats.results, "
        "last: arsel.ui.history.slice(-5).map(r => [r.frame_id, r.objects.map(o => [o.id, o.status, o.bbox_xyxy])])}")
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what} (last value {value!r}); "
                f"page state {state}; console: {logs}")


@pytest.fixture(scope="module")
def page(server: ServerProcess, browser: Any) -> Any:
    """The page open on the server (token in its URL), camera running and results arriving."""
    browser.get(server.url)
    wait_for(browser, "return window.arsel && arsel.session.welcome", "the server's welcome", 60)
    wait_for(browser, "return arsel.session.stats.results >= 3", "three results", 60)
    return browser


def test_camera_is_the_clip_and_frames_are_its_size(page: Any, clip: Clip) -> None:
    label = page.execute_script("return arsel.ui.trackLabel")
    assert label == str(clip.path), f"the page's camera is {label!r}, not the clip (Chromium's test pattern?)"
    assert page.execute_script("return [arsel.ui.frameW, arsel.ui.frameH]") == [CLIP_HW[1], CLIP_HW[0]]
    assert page.execute_script("return arsel.session.welcome.protocol") == "arsel.v1"


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (7, 4), (480, 640)])
def test_page_decodes_coco_rle_like_pycocotools(page: Any, hw: tuple[int, int]) -> None:
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(hw[0] * 1000 + hw[1])
    masks = [np.zeros(hw, np.uint8), np.ones(hw, np.uint8), (rng.random(hw) < 0.5).astype(np.uint8)]
    blob = np.zeros(hw, np.uint8)
    blob[hw[0] // 4: 3 * hw[0] // 4 + 1, hw[1] // 3: 2 * hw[1] // 3 + 1] = 1
    masks.append(blob)
    for m in masks:
        rle = mask_utils.encode(np.asfortranarray(m))
        got = page.execute_script(
            "const m = arsel.decodeMask(arguments[0]); return Array.from(m).join('')",
            {"size": rle["size"], "counts": rle["counts"].decode()})
        assert got == "".join(map(str, m.ravel())), f"page decodes a {hw} mask differently from pycocotools"


def png_rgba(data_url: str) -> np.ndarray:
    """A canvas ``toDataURL('image/png')`` -> (H, W, 4) uint8 RGBA."""
    png = base64.b64decode(data_url.split(",", 1)[1])
    bgra = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert bgra is not None and bgra.ndim == 3 and bgra.shape[2] == 4
    return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGBA)


def read_overlay(driver: Any) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The drawn result (frame_id, objects, colours), the mask layer's RGBA and the shown frame's RGB,
    read in one script so that they belong together."""
    snap = driver.execute_script(
        "const s = arsel.overlay(); if (s) s.colors = Object.fromEntries(s.objects.map(o => [o.id, "
        "arsel.colorOf(o.id)])); return s")
    assert snap is not None, "no result drawn"
    rgba = png_rgba(snap["png"])
    assert rgba.shape[:2] == (snap["height"], snap["width"])
    return snap, rgba, png_rgba(snap["view"])[..., :3]


def overlay_masks(snap: dict[str, Any], rgba: np.ndarray) -> dict[int, np.ndarray]:
    """Per drawn object id, the mask layer's pixels in that object's colour (nearest palette colour)."""
    ids = [o["id"] for o in snap["objects"] if o.get("mask")]
    if not ids:
        return {}
    colors = np.array([snap["colors"][str(i)] for i in ids], np.float32)  # (K, 3)
    nearest = np.linalg.norm(rgba[..., None, :3].astype(np.float32) - colors, axis=-1).argmin(-1)  # (H, W)
    drawn = rgba[..., 3] > 0
    return {i: drawn & (nearest == k) for k, i in enumerate(ids)}


def server_masks(snap: dict[str, Any]) -> dict[int, np.ndarray]:
    """The result's masks decoded by pycocotools (the reference COCO RLE reader)."""
    from pycocotools import mask as mask_utils

    with warnings.catch_warnings():  # pycocotools 2.0.x on numpy 2: a DeprecationWarning about copy=
        warnings.simplefilter("ignore", DeprecationWarning)
        return {o["id"]: mask_utils.decode({"size": o["mask"]["size"], "counts": o["mask"]["counts"].encode()})
                .astype(bool) for o in snap["objects"]}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def client_xy(driver: Any, x: float, y: float) -> tuple[int, int]:
    """Frame pixel (x, y) -> viewport CSS pixel, from the canvas' layout (not the page's own mapping)."""
    rect = driver.execute_script("const r = document.getElementById('marks').getBoundingClientRect(); "
                                 "return [r.left, r.top, r.width, r.height]")
    return round(rect[0] + (x + 0.5) * rect[2] / CLIP_HW[1]), round(rect[1] + (y + 0.5) * rect[3] / CLIP_HW[0])


def drag(driver: Any, box_xyxy: tuple[float, ...], steps: int = 6) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    (x0, y0), (x1, y1) = client_xy(driver, *box_xyxy[:2]), client_xy(driver, *box_xyxy[2:])
    ab = ActionBuilder(driver)
    ab.pointer_action.move_to_location(x0, y0).pointer_down()
    for k in range(1, steps + 1):
        ab.pointer_action.move_to_location(round(x0 + (x1 - x0) * k / steps), round(y0 + (y1 - y0) * k / steps))
    ab.pointer_action.pointer_up()
    ab.perform()


def click(driver: Any, x: float, y: float, shift: bool = False) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    chain = ActionChains(driver)
    if shift:
        chain.key_down(Keys.SHIFT)
    chain.w3c_actions.pointer_action.move_to_location(*client_xy(driver, x, y))
    chain.w3c_actions.key_action.pause()
    chain.click()
    if shift:
        chain.key_up(Keys.SHIFT)
    chain.perform()


def hover(driver: Any, x: float, y: float) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    ab = ActionBuilder(driver)
    ab.pointer_action.move_to_location(*client_xy(driver, x, y))
    ab.perform()


def last_prompt(driver: Any) -> dict[str, Any]:
    return driver.execute_script("return arsel.ui.promptsSent.at(-1)")


def results_after(driver: Any, n: int, what: str) -> None:
    """Wait for ``n`` more results than the page has now."""
    wait_for(driver, "return arsel.session.stats.results >= arguments[0]", what, 30,
             driver.execute_script("return arsel.session.stats.results") + n)


def check_overlay(driver: Any, clip: Clip) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """The mask layer shows exactly the server's masks of the result it names, over that result's frame
    (a frame of the clip). Returns the snapshot and the server's masks."""
    snap, rgba, view = read_overlay(driver)
    assert snap["shown_frame_id"] == snap["frame_id"], "the masks are drawn over another frame"
    index, diff = clip.index_of(view)
    assert diff < 12, f"the result's frame is no frame of the clip (closest {index}, difference {diff:.1f})"
    expected = server_masks(snap)
    assert all(m.shape == CLIP_HW for m in expected.values())
    drawn = overlay_masks(snap, rgba)
    assert iou(rgba[..., 3] > 0, np.logical_or.reduce([np.zeros(CLIP_HW, bool), *expected.values()])) >= 0.95
    for oid, mask in expected.items():
        assert iou(drawn[oid], mask) >= 0.95, f"frame {snap['frame_id']}: object {oid} drawn != server mask"
    return snap, expected


def test_box_drag_draws_the_servers_mask_and_the_hud(page: Any, clip: Clip, tmp_path: Path) -> None:
    shown = wait_for(page, "return arsel.shown()", "a result's frame on screen", 30)
    index, diff = clip.index_of(png_rgba(shown["view"])[..., :3])
    assert diff < 12, f"the page shows no frame of the clip (closest: frame {index}, mean difference {diff:.1f})"
    box = clip.box_xyxy(index, pad=6.0)
    drag(page, box)
    sent = last_prompt(page)
    assert (sent["action"], sent["object_id"], sent["points"]) == ("add", None, [])
    assert sent["frame_id"] >= shown["frame_id"]
    assert np.allclose(sent["box"], box, atol=2.0), (sent["box"], box)  # client pixels -> frame pixels
    swan = wait_for(page, "const d = arsel.ui.drawn, id = arsel.ui.selectedId; return id !== null && d && "
                          "d.objects.some(o => o.id === id && o.bbox_xyxy) && id", "the swan's mask", 60)
    snap, expected = check_overlay(page, clip)
    page.save_screenshot(str(tmp_path / "browser_client.png"))

    # the first mask after the prompt is mostly in the dragged box (LiteMedSAM's masks of a loose box
    # spill over, and the tracker moves it with the clip; the box's pixels are checked above)
    first = page.execute_script("return arsel.ui.history.find(r => r.frame_id > arguments[0] && "
                                "r.objects.some(o => o.id === arguments[1] && o.bbox_xyxy))", sent["frame_id"], swan)
    mask = server_masks(first)[swan]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    pad = 24
    inside = mask[max(y0 - pad, 0):y1 + pad, max(x0 - pad, 0):x1 + pad].sum() / mask.sum()
    assert inside >= 0.5 and mask.sum() >= 0.05 * (x1 - x0) * (y1 - y0), (inside, mask.sum())

    # the HUD shows a round trip and the server's stages
    hud = page.execute_script("return document.getElementById('hud').textContent")
    rtt = re.search(r"rtt (\d+(?:\.\d+)?) ms", hud)
    assert rtt and float(rtt.group(1)) > 0, hud
    assert re.search(r"server \d+(\.\d)? ms: queue .* decode", hud), hud
    assert float(page.execute_script("return document.getElementById('hud').dataset.rttMs")) > 0

    # later results too: the layer follows the newest result
    results_after(page, 3, "three more results")
    later, _ = check_overlay(page, clip)
    assert later["frame_id"] > snap["frame_id"]


def test_click_shift_click_remove_gaze_and_clear(page: Any, server: ServerProcess) -> None:
    before = set(page.execute_script("return (arsel.ui.drawn?.objects ?? []).map(o => o.id)"))
    # "new object", then a click: an object from a foreground point on the displayed frame
    page.find_element("id", "new").click()
    assert page.execute_script("return arsel.ui.selectedId") is None
    click(page, 600.0, 440.0)
    sent = last_prompt(page)
    assert (sent["action"], sent["object_id"], sent["box"]) == ("add", None, None)
    assert len(sent["points"]) == 1 and sent["points"][0][2] == 1
    assert np.allclose(sent["points"][0][:2], (600.0, 440.0), atol=1.5), sent
    point_id = wait_for(page, "const id = arsel.ui.selectedId; return id !== null && !arguments[0].includes(id) "
                              "&& (arsel.ui.drawn?.objects ?? []).some(o => o.id === id) && id",
                        "the clicked object", 30, sorted(before))

    # shift-click: a background point refining the selected object, on the frame shown
    click(page, 20.0, 440.0, shift=True)
    sent = last_prompt(page)
    assert (sent["action"], sent["object_id"]) == ("refine", point_id)
    assert sent["points"][-1][2] == 0 and np.allclose(sent["points"][-1][:2], (20.0, 440.0), atol=1.5), sent
    results_after(page, 2, "results after the refine")

    # remove the selected object; the others stay
    page.find_element("id", "remove").click()
    assert (last_prompt(page)["action"], last_prompt(page)["object_id"]) == ("remove", point_id)
    wait_for(page, "return !(arsel.ui.drawn?.objects ?? []).some(o => o.id === arguments[0])", "the removal", 30,
             point_id)

    # mouse as gaze: dwelling on a spot selects it (the server's dwell), without a click
    ids = page.execute_script("return (arsel.ui.drawn?.objects ?? []).map(o => o.id)")
    page.find_element("id", "gaze").click()
    hover(page, 560.0, 60.0)
    wait_for(page, "return (arsel.ui.drawn?.objects ?? []).some(o => !arguments[0].includes(o.id))",
             "an object selected by dwelling", 30, ids)
    page.find_element("id", "gaze").click()

    # clear: no objects, an empty mask layer
    page.find_element("id", "clear").click()
    assert last_prompt(page)["action"] == "clear"
    wait_for(page, "const d = arsel.ui.drawn; return d && d.objects.length === 0 && d.frame_id > arguments[0]",
             "no objects after clear", 30, last_prompt(page)["frame_id"])
    snap, rgba, _ = read_overlay(page)
    assert snap["objects"] == [] and not (rgba[..., 3] > 0).any()

    # every prompt the page sent is valid arsel.v1, and the server answered none with an error
    prompts = page.execute_script("return arsel.ui.promptsSent")
    assert [p["action"] for p in prompts][-4:] == ["add", "refine", "remove", "clear"]
    for msg in prompts:
        check("prompt", msg)
    assert page.execute_script("return arsel.ui.errors") == []
    with urllib.request.urlopen(server.base + "healthz", timeout=5) as r:
        assert json.load(r)["exceptions"] == 0


def touch(driver: Any, points_xy: list[tuple[float, float]]) -> None:
    """One finger: down at the first point, through the others, up at the last (a tap when one point)."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    ab = ActionBuilder(driver, mouse=PointerInput(interaction.POINTER_TOUCH, "finger"))
    ab.pointer_action.move_to_location(*client_xy(driver, *points_xy[0])).pointer_down()
    for xy in points_xy[1:]:
        ab.pointer_action.move_to_location(*client_xy(driver, *xy))
    ab.pointer_action.pointer_up()
    ab.perform()


def test_phone_layout_touch_tap_and_drag(page: Any, clip: Clip) -> None:
    size = page.get_window_size()
    page.set_window_size(420, 900)  # a phone in portrait
    try:
        wait_for(page, "const r = document.getElementById('stage').getBoundingClientRect(); "
                       "return r.width <= innerWidth && r.width > 300", "the view to fit the narrow window", 10)
        layout = page.execute_script(
            "const s = document.getElementById('stage').getBoundingClientRect(), "
            "p = document.getElementById('panel').getBoundingClientRect(); "
            "return {w: s.width, h: s.height, bottom: p.bottom, vw: innerWidth, vh: innerHeight, "
            "sw: document.documentElement.scrollWidth}")
        assert abs(layout["w"] / layout["h"] - CLIP_HW[1] / CLIP_HW[0]) < 0.02, layout  # no distortion
        assert layout["bottom"] <= layout["vh"] + 1 and layout["sw"] <= layout["vw"], layout  # nothing scrolls

        page.find_element("id", "new").click()
        n = page.execute_script("return arsel.ui.promptsSent.length")
        touch(page, [(200.0, 200.0), (260.0, 250.0), (330.0, 300.0)])  # touch-drag: a box
        sent = last_prompt(page)
        assert page.execute_script("return arsel.ui.promptsSent.length") == n + 1
        assert sent["action"] == "add" and np.allclose(sent["box"], (200, 200, 330, 300), atol=3.0), sent
        wait_for(page, "return arsel.ui.selectedId !== null", "the touched box's object", 30)
        page.find_element("id", "new").click()
        touch(page, [(120.0, 380.0)])  # tap: a foreground point
        sent = last_prompt(page)
        assert sent["action"] == "add" and sent["box"] is None, sent
        assert len(sent["points"]) == 1 and np.allclose(sent["points"][0], (120.0, 380.0, 1), atol=3.0), sent
        results_after(page, 2, "results after the touches")
        assert page.execute_script("return arsel.ui.errors") == []
    finally:
        page.set_window_size(size["width"], size["height"])


def mask_counts_string(mask: np.ndarray) -> str:
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def test_3d_figures_are_shown_when_a_result_has_them(page: Any) -> None:
    """The browser sends no depth, so the server sends no box3d here: a result message with one is
    handed to the page's message handler as the socket would (a frame id it never sent)."""
    obj = {"id": 200, "score": 0.9, "status": "tracked", "bbox_xyxy": [10, 10, 50, 40],
           "mask": {"size": list(CLIP_HW), "counts": mask_counts_string(np.zeros(CLIP_HW, bool))},
           "box3d": {"center_m": [0.1, -0.2, 1.5], "extent_m": [0.3, 0.2, 0.1], "rotation_xyzw": [0, 0, 0, 1]},
           "centroid_m": [0.1, -0.2, 1.5]}
    msg = {"type": "result", "frame_id": 10**9, "keyframe_id": 0, "embedding_age_frames": 0, "objects": [obj],
           "latency_ms": {k: 1.0 for k in ("queue", "motion", "decode", "postprocess", "lift", "server_total")},
           "dropped": 0}
    check("result", msg)
    text = page.execute_script("arsel.session.onText(arguments[0]); "
                               "return document.querySelector('#objects .chip[data-object-id=\"200\"]').textContent",
                               msg)
    assert "(0.10, -0.20, 1.50) m" in text and "1.52 m away" in text and "0.30 x 0.20 x 0.10 m" in text, text


@pytest.mark.parametrize(("page_url", "token", "expected"), [
    ("http://127.0.0.1:8765/?token=abc", "abc", "ws://127.0.0.1:8765/v1/stream?token=abc"),
    ("https://10.0.0.5:8765/", "", "wss://10.0.0.5:8765/v1/stream"),
    ("https://host.example/arsel/?x=1#h", "t/+ =", "wss://host.example/arsel/v1/stream?token=t%2F%2B+%3D"),
])
def test_stream_url_follows_the_page(page: Any, page_url: str, token: str, expected: str) -> None:
    """wss:// for an https page (a headset's browser needs it for the camera), the token in the query."""
    got = page.execute_async_script(
        "const done = arguments[2]; import('./static/wire.js').then(m => done(m.streamUrl(arguments[0], "
        "arguments[1])))", page_url, token)
    assert got == expected


def test_page_without_the_token_says_so(page: Any, server: ServerProcess) -> None:
    """Runs last: it leaves the shared page on a session the server refused."""
    page.get(server.base)
    status = wait_for(page, "const s = document.getElementById('status').textContent; "
                            "return s.includes('unauthorized') && s", "the unauthorized message", 30)
    assert "?token=" in status
    assert page.execute_script("return arsel.session.stats.results") == 0
