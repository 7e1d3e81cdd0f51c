"""The live server's speed settings: first-come-first-served locks on the shared backend (so no
session starves), the drift-correction cap, and the ``arsel serve`` flags that set them."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from engine.serve.engines import FairLock, SharedBackend
from engine.stream.guards import GuardConfig


def test_fair_lock_grants_in_request_order() -> None:
    lock, order, ready = FairLock(), [], []
    holder = threading.Event()

    def worker(name: str) -> None:
        ready.append(name)
        with lock:
            order.append(name)

    with lock:  # held while the workers queue up, one after the other
        holder.set()
        threads = []
        for name in "abcde":
            t = threading.Thread(target=worker, args=(name,))
            t.start()
            threads.append(t)
            while len(ready) < len(threads):
                time.sleep(0.001)
            time.sleep(0.02)  # it is now waiting on the lock
    for t in threads:
        t.join(5)
    assert order == list("abcde")


class _SlowDecoder:
    """A backend whose decode holds the core for ``ms`` (the GIL released, like a real runtime)."""

    input_size = 256

    def __init__(self, ms: float) -> None:
        self.ms = ms

    def decode(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(self.ms / 1e3)
        return np.zeros((1, 1), np.float32), np.zeros((1, 1, 4, 4), np.float32)


def test_shared_backend_shares_decodes_evenly_between_greedy_sessions() -> None:
    """Four sessions decoding back to back: each gets about a quarter of the decodes. (With a plain
    ``threading.Lock`` the session that just released it usually takes it again.)"""
    shared, counts, stop = SharedBackend(_SlowDecoder(2.0)), [0] * 4, threading.Event()

    def session(i: int) -> None:
        while not stop.is_set():
            shared.decode(None, None, None, None, None)
            counts[i] += 1

    threads = [threading.Thread(target=session, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.6)
    stop.set()
    for t in threads:
        t.join(5)
    assert sum(counts) > 40, counts
    assert min(counts) >= 0.8 * max(counts), counts


def test_guard_config_rejects_a_zero_cap() -> None:
    with pytest.raises(ValueError, match="max_candidates"):
        GuardConfig(max_candidates=0)


def _serve_args(*argv: str) -> argparse.Namespace:
    from engine.serve.cli import add_serve_parser

    p = argparse.ArgumentParser()
    add_serve_parser(p.add_subparsers())
    return p.parse_args(["serve", *argv])


def test_serve_flags_set_the_live_engine_config() -> None:
    from engine.serve.cli import (
        LIVE_MAX_CORRECTION_DECODES,
        LIVE_REUSE_DECODE_PX,
        LIVE_ROI_MARGIN,
        check_args,
        engine_config,
    )

    args = _serve_args()
    assert args.backend == "auto"
    cfg = engine_config(args)
    assert cfg.reuse_decode_px == LIVE_REUSE_DECODE_PX and cfg.guard.max_candidates == LIVE_MAX_CORRECTION_DECODES
    assert cfg.guard.staged and cfg.track_prompt_own_motion  # the expected box first; reuse survives skipped frames
    assert cfg.roi_margin == LIVE_ROI_MARGIN == 0.25
    cfg = engine_config(_serve_args("--reuse-decode-px", "0", "--max-correction-decodes", "0", "--roi-margin", "none"))
    assert cfg.reuse_decode_px == 0 and cfg.guard.max_candidates is None and not cfg.guard.staged  # as `arsel track`
    assert not cfg.track_prompt_own_motion and cfg.roi_margin is None
    assert engine_config(_serve_args("--roi-margin", "0")).roi_margin == 0.0
    from engine.validate import InputError

    for flag, value in (("--max-correction-decodes", "-1"), ("--reuse-decode-px", "nan"), ("--threads", "0"),
                        ("--roi-margin", "-0.5"), ("--roi-margin", "nan")):
        with pytest.raises(InputError, match=flag):
            check_args(_serve_args(flag, value))


def test_a_roi_margin_that_is_not_a_number_names_what_it_takes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _serve_args("--roi-margin", "wide")
    assert exc.value.code == 2
    assert "--roi-margin: takes a fraction of the box size (e.g. 0.25) or none, got 'wide'" in capsys.readouterr().err


def test_served_engines_drop_a_window_no_decode_can_use() -> None:
    """``arsel serve``'s default upscaling window stays for a box-only model on a backend that takes
    one, and becomes whole masks, without a warning per session, where none applies: a point-capable
    model (its masks are fed back) or a backend that decodes whole masks only."""
    import warnings

    from engine.backends.torch_backend import TorchBackend
    from engine.models.registry import build_model, get_spec
    from engine.serve.engines import LocalEngines
    from engine.stream.engine import EngineConfig

    class Whole(TorchBackend):
        supports_roi = False

    box_only, points = get_spec("lite_medsam"), get_spec("mobile_sam")
    cases = [(TorchBackend(build_model(box_only), box_only.input_size), box_only, 0.25),
             (TorchBackend(build_model(points), points.input_size), points, None),
             (Whole(build_model(box_only), box_only.input_size), box_only, None)]
    for backend, spec, want in cases:
        engines = LocalEngines(backend, spec, spec.name, async_encoder=False, config=EngineConfig(roi_margin=0.25))
        assert engines.config.roi_margin == want, (spec.name, type(backend).__name__)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            engines().close()


class _CountingBackend:
    """Passes through to ``inner``; records the prompt batch size of every decode."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.batches = inner, []
        self.input_size = inner.input_size

    def decode(self, embedding: Any, point_coords: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        self.batches.append(int(np.asarray(point_coords).shape[0]))
        return self.inner.decode(embedding, point_coords, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _lite_medsam_torch() -> Any:
    """LiteMedSAM (real weights) on torch."""
    from engine.backends.torch_backend import TorchBackend
    from engine.models.registry import load_model
    from tests.refs import medsam_checkpoint

    return TorchBackend(load_model("lite_medsam", medsam_checkpoint()), 256)


def _blackswan_point_start(data_dir: Path, backend: Any, guard: GuardConfig,
                           after_first: Callable[[], None] | None = None) -> tuple[Any, list[Any]]:
    """The point start on DAVIS blackswan's first 12 frames from the old square proposals (the
    half-swan start that decays, ``test_stream_guards.SQUARES``), keyframe every 5, torch on 1
    thread: the engine and each frame's object result. ``after_first()`` runs after frame 0."""
    import torch

    from engine.models.registry import get_spec
    from engine.stream.engine import EngineConfig, StreamEngine
    from engine.stream.evaluate import davis_annotations, start_prompt
    from engine.stream.scheduler import KeyframePolicy
    from engine.stream.sources import ArraySource, folder_images
    from tests.test_stream_guards import SQUARES

    folder = data_dir / "davis_blackswan"
    truth = davis_annotations(folder)[:12]
    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in folder_images(folder / "JPEGImages")[:12]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        eng = StreamEngine(backend, get_spec("lite_medsam"), KeyframePolicy(interval=5),
                           config=EngineConfig(guard=guard, proposals=SQUARES))
        with eng:
            eng.add_object(start_prompt("point", truth[0]))
            results = []
            for i, res in enumerate(eng.run(ArraySource(frames))):
                results.append(res.objects[0])
                if i == 0 and after_first is not None:
                    after_first()
    finally:
        torch.set_num_threads(threads)
    return eng, results


@pytest.mark.slow
def test_correction_cap_bounds_every_correction_decode(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A point start on blackswan from the old square proposals (the half-swan start that decays,
    ``test_stream_guards.SQUARES``) is corrected within 12 frames; with the cap at 2 no later decode
    (a correction included) takes more than 2 prompts, and it still holds the swan (never under 60 % of its first area).
    A drift correction forgets the object's cached decode (the one that failed its check), so decode
    reuse (``reuse_decode_px``) can never hand the failing mask back on the next frame."""
    from engine.stream import guard_steps

    cache_at_correction: list[object] = []
    correct = guard_steps.correct

    def recording_correct(engine: Any, obj: Any, *args: Any, **kwargs: Any) -> Any:
        if not (args[-1] if len(args) == 7 else kwargs.get("reacquire", False)):
            cache_at_correction.append(obj.decode_cache)
        return correct(engine, obj, *args, **kwargs)

    monkeypatch.setattr(guard_steps, "correct", recording_correct)
    uncapped = GuardConfig()
    n_all = len(uncapped.margins) + len(uncapped.anchor_scales) + len(uncapped.anchor_squares)
    backend = _CountingBackend(_lite_medsam_torch())
    eng, results = _blackswan_point_start(data_dir, backend, GuardConfig(max_candidates=2),
                                          after_first=backend.batches.clear)  # its own proposals: no correction
    assert eng.stats.track_status["drift_corrected"] >= 1, eng.stats.track_status
    assert cache_at_correction and all(c is None for c in cache_at_correction), cache_at_correction
    assert n_all > 2 and max(backend.batches) <= 2, backend.batches
    areas = np.array([r.mask.sum() for r in results], float)
    assert areas.min() > 0.6 * areas[0], areas


def test_frames_in_flight_count_the_one_being_processed() -> None:
    """At most ``max_inflight`` frames in flight: the one the worker steps plus those queued, so with
    the default 2 a new frame waits only for the frame being processed, never behind another."""
    from engine.serve.app import frames_to_drop

    assert frames_to_drop(queued=1, processing=0, max_inflight=2) == 0
    assert frames_to_drop(queued=2, processing=0, max_inflight=2) == 0  # idle worker: it takes one at once
    assert frames_to_drop(queued=2, processing=1, max_inflight=2) == 1  # busy: only the newest waits
    assert frames_to_drop(queued=1, processing=1, max_inflight=1) == 1  # busy, one in flight: the arrival goes
    assert frames_to_drop(queued=5, processing=1, max_inflight=3) == 3


@pytest.mark.slow
def test_staged_correction_decodes_the_expected_box_first(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``GuardConfig(staged=True)`` (``arsel serve``'s live setting): every drift correction first
    decodes the expected mask's box alone; the other boxes are decoded only after it failed its
    check, and at least one correction on blackswan's decaying point start stops after that one decode."""
    from engine.stream import guard_steps

    calls: list[tuple[int, bool]] = []  # (boxes decoded, any passed) per batched decode
    batched = guard_steps.batched_candidates

    def recording(predictor: Any, boxes: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        out, ms = batched(predictor, boxes, *args, **kwargs)
        calls.append((len(boxes), any(c.check.passed for c in out)))
        return out, ms

    monkeypatch.setattr(guard_steps, "batched_candidates", recording)
    eng, results = _blackswan_point_start(data_dir, _lite_medsam_torch(), GuardConfig(max_candidates=4, staged=True))
    areas = [r.mask.sum() for r in results]
    assert eng.stats.track_status["drift_corrected"] >= 1, eng.stats.track_status
    assert calls and {n for n, _ in calls} <= {1, 3}, calls
    for k, (n, _) in enumerate(calls):
        if n == 3:  # a second stage follows its own first stage, which failed
            assert k > 0 and calls[k - 1] == (1, False), calls
    assert any(call == (1, True) for call in calls), calls  # a correction that cost one decode
    assert min(areas) > 0, areas  # it holds the swan on every frame


def test_encoder_waiting_for_its_turn_encodes_the_newest_frame() -> None:
    """A session's keyframe encoder that waits for the shared encode lock (other sessions' encodes)
    starts on the newest frame submitted meanwhile, not on the one it was first asked for; once an
    encode runs, new requests are dropped as before. Both kinds are counted in ``dropped_busy``."""
    from engine.stream.scheduler import AsyncEncoder
    from engine.types import Frame

    lock, running, release = FairLock(), threading.Event(), threading.Event()
    encoded: list[int] = []

    def encode(rgb: np.ndarray, index: int) -> int:
        encoded.append(index)
        if index == 9:
            running.set()
            release.wait(10)
        return index

    frame = lambda i: Frame(i, i, np.zeros((8, 8, 3), np.uint8))  # noqa: E731
    grey = np.zeros((4, 4), np.uint8)
    with AsyncEncoder(encode, turn=lambda: lock) as enc:
        with lock:  # another session's encode holds the turn
            assert all(enc.submit(frame(i), grey) for i in range(4))
            time.sleep(0.05)
        assert enc.wait_idle(10) and encoded == [3] and enc.latest().frame_index == 3  # type: ignore[union-attr]
        assert enc.stats.dropped_busy == 3
        assert enc.submit(frame(9), grey) and running.wait(10)
        assert not enc.submit(frame(10), grey)  # an encode is running: dropped
        release.set()
        assert enc.wait_idle(10) and encoded == [3, 9] and enc.stats.dropped_busy == 4


def test_shared_backend_encode_inside_a_turn_does_not_wait_for_itself() -> None:
    """``SharedBackend.encode_turn`` holds the encode lock; ``encode`` on the same thread inside it
    runs at once, while another thread's ``encode`` waits for the turn to end."""
    class Echo:
        input_size = 8

        def encode(self, image: np.ndarray) -> float:
            return float(image.sum())

    shared = SharedBackend(Echo())  # type: ignore[arg-type]
    other: list[float] = []
    with shared.encode_turn():
        assert shared.encode(np.ones(3)) == 3.0
        t = threading.Thread(target=lambda: other.append(shared.encode(np.ones(2))))
        t.start()
        time.sleep(0.05)
        assert other == []  # waits for the turn
    t.join(5)
    assert other == [2.0]


def _panning_scene(n: int, dx: int) -> list[np.ndarray]:
    """``n`` 480x640 RGB frames of a camera panning ``dx`` px per frame over a textured scene with a
    red block fixed in it (the block moves ``-dx`` px per frame in the image)."""
    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.integers(0, 256, (480, 640 + n * dx, 3), dtype=np.uint8), (0, 0), 2)
    scene[180:300, 300:420] = (230, 40, 40)
    return [np.ascontiguousarray(scene[:, i * dx:i * dx + 640]) for i in range(n)]


@pytest.mark.parametrize("own", [True, False])
def test_track_prompt_through_its_own_frames_motion_keeps_decodes_reusable(cached_backend: Any, own: bool) -> None:
    """A camera pans 12 px a frame over a still object; decode reuse allows 6 px. Mapped through the
    motion of the frame it was found on (``track_prompt_own_motion``, ``arsel serve``'s live
    setting), the last box names the same keyframe place every frame, so the decodes after the
    first tracking one are reused; through the current frame's motion it is one frame's pan off and
    none is. The mask follows the block either way."""
    from engine.models.registry import get_spec
    from engine.stream.engine import EngineConfig, StreamEngine
    from engine.stream.events import Prompt
    from engine.stream.scheduler import KeyframePolicy
    from engine.stream.sources import ArraySource

    frames = _panning_scene(10, 12)
    eng = StreamEngine(cached_backend, get_spec("lite_medsam"), KeyframePolicy(interval=1000), async_encoder=False,
                       config=EngineConfig(reuse_decode_px=6.0, track_prompt_own_motion=own))
    with eng:
        eng.add_object(Prompt.box([300, 180, 420, 300]))
        results = [res.objects[0] for res in eng.run(ArraySource(frames))]
    for i, r in enumerate(results):  # the block, wherever the camera is
        block = np.zeros((480, 640), bool)
        block[180:300, 300 - 12 * i:420 - 12 * i] = True
        assert (r.mask & block).sum() / (r.mask | block).sum() > 0.8, (i, own)
    if own:
        assert eng.stats.decodes_reused >= 7, eng.stats.decodes_reused
    else:
        assert eng.stats.decodes_reused <= 1, eng.stats.decodes_reused
