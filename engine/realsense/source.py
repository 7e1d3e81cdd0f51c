"""``RealSenseSource``: aligned RGB-D ``Frame``s from a live RealSense camera or a recording.

Live: ``rs.pipeline`` with depth Z16 and colour RGB8 at ``RealSenseConfig`` sizes/fps (and
``enable_record_to_file`` with ``record_to``). Playback: ``enable_device_from_file(path,
repeat_playback=False)`` with ``set_real_time(False)`` (set before the pipeline starts), so every
recorded frame is processed whatever the consumer's speed, and the stream ends with the file.

What happens to every frameset is counted in ``stats`` (:class:`RealSenseStats`):

* ``no_depth``: framesets without depth are *yielded* with ``depth_raw=None`` (the consumer sees
  the colour; a lift of that frame reports status "no_depth") and counted here;
* ``bad``: framesets without colour (a ``Frame`` needs ``rgb``), and framesets the depth filters
  or ``rs.align`` raised on (``RuntimeError``/``ValueError``), are skipped and counted;
  ``max_bad_framesets`` of them in a row raise ``SourceError`` naming the last problem;
* ``dropped``: gaps in the colour frame numbers (frames the SDK dropped while we were busy);
* ``failed_reads``: waits of ``timeout_ms`` without a frameset; ``max_missed_frames`` of them in a
  row raise ``SourceError`` (camera unplugged or USB reset).

``Frame.index`` counts input positions (a dropped frame leaves a gap); ``timestamp_ns`` is the
colour frame's timestamp (ms in the SDK's clock domain, usually global time) in ns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.realsense.config import RealSenseConfig
from engine.realsense.processing import FrameProcessor, f32, import_rs, intrinsics_from_rs
from engine.frame_source import FrameSource, SourceError, SourceKind, SourceStats, register_source
from engine.types import CameraIntrinsics, Frame

PLAYBACK_SUFFIXES = (".bag", ".db3")


@dataclass(slots=True)
class RealSenseStats(SourceStats):
    """``SourceStats`` plus ``no_depth``: frames yielded with ``depth_raw=None``."""

    no_depth: int = 0


def list_devices() -> list[tuple[str, str]]:
    """``(name, serial)`` of every attached RealSense device."""
    rs = import_rs()
    return [(d.get_info(rs.camera_info.name), d.get_info(rs.camera_info.serial_number))
            for d in rs.context().query_devices()]


class RealSenseSource(FrameSource):
    """Aligned RGB-D frames from a RealSense camera (live) or a ``.bag``/``.db3`` recording.

    Args:
        config: streams, alignment, filters, recording, disconnect limits.
        bag: play this recording instead of opening a camera (its own stream sizes are used).
        pipeline: an ``rs.pipeline``-like object to use instead of a new one (tests inject
            doubles; with one given, no device check is made).

    Raises:
        SourceError: no camera attached, the requested serial absent, the stream configuration
            unsupported, the recording unreadable or without depth/colour.
    """

    def __init__(self, config: RealSenseConfig | None = None, bag: str | Path | None = None, *,
                 pipeline: Any | None = None) -> None:
        super().__init__()
        rs = import_rs()
        self._rs = rs
        self.config = config or RealSenseConfig()
        self.stats: RealSenseStats = RealSenseStats()
        self.bag = None if bag is None else Path(bag)
        self.fps = float(self.config.fps)
        self.depth_scale_m = 0.001
        self.intrinsics: CameraIntrinsics | None = None
        self.device_name = ""
        self._playback: Any = None
        self._processor = FrameProcessor(self.config.filters, self.config.align_to_color)
        if self.bag is not None:
            self._check_bag(self.bag)
        elif pipeline is None:
            self._check_devices()
        self._pipeline = pipeline if pipeline is not None else rs.pipeline()
        self._started = False
        self._start()

    # --- opening ------------------------------------------------------------------------------------
    def _check_bag(self, path: Path) -> None:
        if self.config.record_to is not None:
            raise ValueError("record_to is for live cameras; a recording is played back, not re-recorded")
        if not path.is_file():
            raise FileNotFoundError(f"RealSense recording not found: {path}")
        if path.suffix.lower() not in PLAYBACK_SUFFIXES:
            raise SourceError(f"{path} is not a RealSense recording: expected {' or '.join(PLAYBACK_SUFFIXES)} "
                              "(record one with realsense-viewer or RealSenseConfig(record_to=...))")

    def _check_devices(self) -> None:
        devices = list_devices()
        if not devices:
            raise SourceError(
                "no RealSense camera found: connect a D400-series camera to a USB 3 port (check with "
                "rs-enumerate-devices or lsusb; on Linux install the udev rules), or play a recording "
                "with bag=FILE / --bag FILE"
            )
        serials = [s for _, s in devices]
        if self.config.serial is not None and self.config.serial not in serials:
            raise SourceError(f"RealSense camera with serial {self.config.serial!r} not found; attached: "
                              f"{', '.join(f'{n} ({s})' for n, s in devices)}. Set serial to one of these or None")

    def _rs_config(self) -> Any:
        rs, c = self._rs, self.config
        cfg = rs.config()
        if self.bag is not None:
            cfg.enable_device_from_file(str(self.bag), repeat_playback=False)
            return cfg
        if c.serial is not None:
            cfg.enable_device(c.serial)
        cfg.enable_stream(rs.stream.depth, c.depth_wh[0], c.depth_wh[1], rs.format.z16, c.fps)
        cfg.enable_stream(rs.stream.color, c.color_wh[0], c.color_wh[1], rs.format.rgb8, c.fps)
        if c.record_to is not None:
            c.record_to.parent.mkdir(parents=True, exist_ok=True)
            cfg.enable_record_to_file(str(c.record_to))
        return cfg

    def _start(self) -> None:
        rs, c = self._rs, self.config
        try:
            cfg = self._rs_config()
            if self.bag is not None:
                # Non-real-time must be set before the pipeline starts: set after start, the frames
                # played meanwhile are dropped (a short file loses some of its frames).
                resolved = cfg.resolve(rs.pipeline_wrapper(self._pipeline))
                self._playback = resolved.get_device().as_playback()
                self._playback.set_real_time(False)  # every recorded frame, deterministically
            profile = self._pipeline.start(cfg)
        except RuntimeError as exc:
            if self.bag is not None:
                raise SourceError(f"cannot play {self.bag}: {exc} (is it a complete RealSense recording?)") from None
            if "db3" in str(exc):
                raise SourceError(f"cannot record to {c.record_to}: {exc}; this librealsense writes ROS2 "
                                  "recordings, so name the file *.db3") from None
            raise SourceError(
                f"cannot start the RealSense camera with depth {c.depth_wh[0]}x{c.depth_wh[1]}, colour "
                f"{c.color_wh[0]}x{c.color_wh[1]} at {c.fps} fps: {exc}. Pick a mode the camera lists "
                "(rs-enumerate-devices), use a USB 3 port, and close other programs using the camera"
            ) from None
        self._started = True
        device = profile.get_device()
        self.device_name = _info(rs, device, rs.camera_info.name)
        depth_sensors = [s for s in device.query_sensors() if s.is_depth_sensor()]
        if depth_sensors:
            self.depth_scale_m = f32(depth_sensors[0].as_depth_sensor().get_depth_scale())
        self._processor.depth_scale_m = self.depth_scale_m
        if self.bag is not None:
            self._playback = device.as_playback()
        self._read_profile(profile)

    def _read_profile(self, profile: Any) -> None:
        rs = self._rs
        streams = {s.stream_type(): s for s in profile.get_streams()}
        missing = [name for name, st in (("depth", rs.stream.depth), ("colour", rs.stream.color)) if st not in streams]
        if missing:
            self.close()
            raise SourceError(f"{self.bag or 'the camera'} has no {' or '.join(missing)} stream; arsel needs "
                              "both (record with depth and colour enabled)")
        color = streams[rs.stream.color].as_video_stream_profile()
        self.fps = float(color.fps())
        grid = color if self.config.align_to_color else streams[rs.stream.depth].as_video_stream_profile()
        if self.config.align_to_color or self.config.filters.decimation == 1:
            self.intrinsics = intrinsics_from_rs(grid.get_intrinsics(), self.depth_scale_m)

    # --- streaming ----------------------------------------------------------------------------------
    def _playback_finished(self) -> bool:
        return self._playback is not None and self._playback.current_status() == self._rs.playback_status.stopped

    def _wait(self, missed: int) -> Any | None:
        """One frameset, or None after a miss (raises once ``max_missed_frames`` are reached)."""
        try:
            return self._pipeline.wait_for_frames(self.config.timeout_ms)
        except RuntimeError as exc:
            if self._playback_finished():
                raise StopIteration from None
            self.stats.failed_reads += 1
            if missed + 1 >= self.config.max_missed_frames:
                raise SourceError(
                    f"RealSense camera disconnected: no frames for {missed + 1} consecutive waits of "
                    f"{self.config.timeout_ms} ms ({exc}). Reconnect it / check the USB 3 cable and port "
                    "(or raise max_missed_frames / timeout_ms for a slow host)"
                ) from exc
            return None

    def _process(self, frames: Any, bad_in_row: int) -> tuple[Any | None, int]:
        """(processed frameset, or None for a bad one; bad framesets in a row so far)."""
        try:
            out = self._processor.process(frames)
            problem = None if out.rgb is not None else "the frameset has no colour frame"
        except (RuntimeError, ValueError) as exc:
            out, problem = None, f"processing failed: {type(exc).__name__}: {exc}"
        if problem is None:
            return out, 0
        self.stats.bad += 1
        if bad_in_row + 1 >= self.config.max_bad_framesets:
            raise SourceError(
                f"RealSense frames unusable: {bad_in_row + 1} framesets in a row could not be used (last: {problem}). "
                "Check the depth filter settings (DepthFilterConfig) and align_to_color, the recording's streams, "
                "or raise max_bad_framesets"
            )
        return None, bad_in_row + 1

    def __iter__(self) -> Iterator[Frame]:
        missed, bad_in_row, last_number, index = 0, 0, None, -1
        try:
            while self._started:
                try:
                    frames = self._wait(missed)
                except StopIteration:
                    return
                if frames is None:
                    missed += 1
                    continue
                missed = 0
                out, bad_in_row = self._process(frames, bad_in_row)
                if out is None:
                    continue
                gap = 1 if last_number is None or out.frame_number <= last_number else out.frame_number - last_number
                self.stats.dropped += gap - 1
                index += gap
                last_number = out.frame_number
                if out.depth_raw is None:
                    self.stats.no_depth += 1
                self.intrinsics = out.intrinsics
                self.stats.delivered += 1
                yield out.to_frame(index)
        finally:
            self.close()

    def save_intrinsics(self, path: str | Path, fmt: str = "arsel") -> Path:
        """Write the intrinsics of the frames' pixel grid as intrinsics JSON (calibration format)."""
        from calibration.intrinsics import save_intrinsics

        if self.intrinsics is None:
            raise ValueError("intrinsics are known after the first frame with decimation and align_to_color=False; "
                             "iterate one frame first")
        return save_intrinsics(path, self.intrinsics, fmt)

    def close(self) -> None:
        """Stop the pipeline (finishes a recording); idempotent."""
        if self._started:
            self._started = False
            try:
                self._pipeline.stop()
            except RuntimeError:
                pass  # already stopped by the SDK (device lost)


def _info(rs: Any, device: Any, key: Any) -> str:
    try:
        return str(device.get_info(key)) if device.supports(key) else ""
    except RuntimeError:
        return ""


def _is_live_spec(text: str) -> bool:
    return text == "realsense" or text.startswith("realsense:")


def _is_recording(text: str) -> bool:
    return text.lower().endswith(PLAYBACK_SUFFIXES) and Path(text).is_file()


# ``open_source`` (engine.stream.sources) reaches RealSense input through these kinds.
register_source(SourceKind("realsense", _is_live_spec,
                           lambda text, realtime=False, **kw: RealSenseSource(
                               RealSenseConfig(serial=text.partition(":")[2] or None)),
                           "'realsense[:SERIAL]'", priority=40))
register_source(SourceKind("realsense_recording", _is_recording,
                           lambda text, realtime=False, **kw: RealSenseSource(bag=text),
                           "a RealSense .bag/.db3 recording", priority=60))
