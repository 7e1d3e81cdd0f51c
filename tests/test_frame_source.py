"""The public frame-source base and the registry ``open_source`` dispatches to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import engine.frame_source as fs
from engine.frame_source import FrameSource, SourceKind, register_source, source_kinds
from engine.stream.sources import open_source
from engine.types import Frame


class _Constant(FrameSource):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def __iter__(self) -> Iterator[Frame]:
        for i in range(self.n):
            frame = self._frame(i, i, np.zeros((4, 6, 3), np.uint8) if i != 1 else None, bgr=False)
            if frame is not None:
                yield frame


def test_base_validates_and_counts_frames() -> None:
    with _Constant(3) as src:
        frames = list(src)
    assert [f.index for f in frames] == [0, 2] and src.stats.to_dict() == {
        "delivered": 2, "dropped": 0, "late": 0, "bad": 1, "failed_reads": 0}


def test_duck_typed_sources_pass_isinstance() -> None:
    class Duck:
        def __iter__(self) -> Iterator[Frame]:
            return iter(())

        def close(self) -> None: ...

    assert isinstance(Duck(), FrameSource) and not isinstance(object(), FrameSource)


def test_open_source_dispatches_to_a_registered_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(fs._KINDS, "const", SourceKind(  # noqa: SLF001
        "const", lambda t: t.startswith("const:"), lambda t, realtime=False: _Constant(int(t[6:])), "'const:N'", 5))
    assert len(list(open_source("const:4"))) == 3  # frame 1 is bad
    with pytest.raises(FileNotFoundError, match=r"is not 'const:N', a camera index, .* or a video file"):
        open_source("nothing-here")


def test_realsense_registers_itself_before_files_and_folders(tmp_path: Path) -> None:
    names = [k.name for k in source_kinds()]
    assert names.index("camera") < names.index("realsense") < names.index("realsense_recording") < names.index("video")
    kinds = {k.name: k for k in source_kinds()}
    bag = tmp_path / "x.bag"
    bag.write_bytes(b"")
    assert kinds["realsense_recording"].matches(str(bag)) and kinds["video"].matches(str(bag))
    assert kinds["realsense"].matches("realsense:123") and not kinds["realsense"].matches("0")


def test_register_replaces_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fs, "_KINDS", dict(fs._KINDS))  # noqa: SLF001
    kind = SourceKind("video", lambda t: False, lambda t, realtime=False: _Constant(0), "nothing", 90)
    assert register_source(kind) is kind and {k.name: k for k in source_kinds()}["video"] is kind
