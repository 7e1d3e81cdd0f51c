"""The frame-source contract every input implements, and the registry ``open_source`` dispatches to.

A source is an iterable of ``engine.types.Frame`` (``rgb`` HxWx3 uint8 RGB, ``timestamp_ns``
monotonic) with ``.stats`` counting what happened to every input frame, so none is lost silently:

* ``delivered``: frames handed to the consumer;
* ``dropped``: frames the source knows it skipped (real-time pacing fell behind, camera gaps);
* ``late``: frames delivered more than half a frame period behind their schedule;
* ``bad``: frames read but unusable (decode failure, ``None``, wrong shape or dtype), skipped;
* ``failed_reads``: reads that returned nothing.

Implementations subclass :class:`FrameSource` (the OpenCV sources of ``engine.stream.sources``, the
RealSense source of ``engine.realsense``). A kind of source that ``open_source`` should reach
registers a :class:`SourceKind`; modules named in ``SOURCE_PLUGINS`` register theirs on first use,
so ``import engine.stream`` never imports them (nor their optional libraries).
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from engine.types import Frame

__all__ = ["FrameSource", "SourceError", "SourceKind", "SourceStats", "register_source", "source_kinds"]


class SourceError(RuntimeError):
    """A source that cannot be opened or stopped delivering frames."""


@dataclass(slots=True)
class SourceStats:
    """Counters of one source (mutable; read them at any time, ``to_dict`` for JSON)."""

    delivered: int = 0
    dropped: int = 0
    late: int = 0
    bad: int = 0
    failed_reads: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class FrameSource(abc.ABC):
    """Base of every source: an iterable of ``Frame`` with ``stats``; ``close`` releases the
    device or file; a context manager.

    Subclasses implement ``__iter__`` and call ``_frame(...)`` to validate and count each image.
    Any object with ``__iter__`` and ``close`` also passes ``isinstance(obj, FrameSource)`` (the
    stream engine and the demo take such duck-typed sources as well).
    """

    fps: float = 30.0

    def __init__(self) -> None:
        self.stats = SourceStats()

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Frame]: ...

    @classmethod
    def __subclasshook__(cls, other: type) -> bool:
        duck = all(any(name in k.__dict__ for k in other.__mro__) for name in ("__iter__", "close"))
        return True if cls is FrameSource and duck else NotImplemented

    def _frame(self, index: int, timestamp_ns: int, image: Any, bgr: bool) -> Frame | None:
        """Validate one decoded image (HxWx3 uint8, BGR when ``bgr``) into a ``Frame``; a bad one is
        counted in ``stats.bad`` and ``None`` returned."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            self.stats.bad += 1
            return None
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else np.ascontiguousarray(image)
        self.stats.delivered += 1
        return Frame(index, int(timestamp_ns), rgb)

    def close(self) -> None:
        """Release the underlying device or file (idempotent)."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class SourceKind:
    """One kind of input ``open_source`` can open.

    ``matches(spec)`` says whether the text names this kind (a cheap check: no device is opened);
    ``open(spec, realtime, **kwargs)`` opens it. Kinds are tried by ``priority``, lowest first.
    ``describes`` names the accepted spellings in the error for a spec no kind matches.
    """

    name: str
    matches: Callable[[str], bool]
    open: Callable[..., FrameSource]
    describes: str
    priority: int = 50


_KINDS: dict[str, SourceKind] = {}
# Modules that register source kinds when imported; imported on the first ``source_kinds()``, so
# that the stream layer never imports them by name (engine.realsense: pyrealsense2 stays lazy too).
SOURCE_PLUGINS: list[str] = ["engine.realsense.source"]
_plugins_loaded: set[str] = set()


def register_source(kind: SourceKind) -> SourceKind:
    """Add (or replace, by ``name``) a kind of source; returns it."""
    _KINDS[kind.name] = kind
    return kind


def source_kinds() -> list[SourceKind]:
    """The registered kinds by priority, after importing the ``SOURCE_PLUGINS`` not yet imported."""
    for module in SOURCE_PLUGINS:
        if module not in _plugins_loaded:
            _plugins_loaded.add(module)
            importlib.import_module(module)
    return sorted(_KINDS.values(), key=lambda k: (k.priority, k.name))
