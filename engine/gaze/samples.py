"""Gaze samples and the gaze CSV format ``timestamp_ns,x,y,confidence``.

CSV rules (:func:`read_gaze_csv`):

- The first non-comment, non-blank line is the header; it must name exactly the columns
  ``timestamp_ns, x, y, confidence`` (any order, spaces around names ignored).
- Lines whose first non-space character is ``#`` are comments; blank lines are skipped.
- ``timestamp_ns``: integer nanoseconds, strictly increasing. ``confidence``: a number in [0, 1].
- ``x, y``: finite numbers, x right, y down, origin top-left of the scene camera image. They may be
  empty or ``nan`` only where ``confidence`` is 0 (a lost sample, e.g. during a blink).
- Units: a comment ``# units: normalized`` (or ``normalised``) or ``# units: pixels`` (``px``)
  anywhere in the file decides. Without one, the file is normalised when every finite x and y lies
  in [0, 1] (and there is at least one), pixels otherwise. Normalised values are converted to
  pixels with ``x_px = x * width``, ``y_px = y * height`` from ``frame_hw``; a normalised file
  without ``frame_hw`` is an error.
"""

from __future__ import annotations

import csv
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path

COLUMNS = ("timestamp_ns", "x", "y", "confidence")
_UNITS_RE = re.compile(r"^\s*#\s*units\s*[:=]\s*(\w+)\s*$", re.IGNORECASE)
NORMALIZED_LIMIT = 2.0  # normalised gaze may stray off the image a little, not to pixel values
_UNIT_NAMES = {"normalized": "normalized", "normalised": "normalized", "pixels": "pixels", "px": "pixels"}


@dataclass(frozen=True, slots=True)
class GazeSample:
    """One gaze sample: ``timestamp_ns`` (int ns), ``x``, ``y`` (scene-camera pixels, float) and
    ``confidence`` in [0, 1]. ``x, y`` may be NaN only when ``confidence`` is 0 (a lost sample)."""

    timestamp_ns: int
    x: float
    y: float
    confidence: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.timestamp_ns, bool) or not isinstance(self.timestamp_ns, numbers.Integral):
            raise ValueError(f"GazeSample.timestamp_ns must be an int (ns), got {self.timestamp_ns!r}")
        object.__setattr__(self, "timestamp_ns", int(self.timestamp_ns))
        for name in ("x", "y", "confidence"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"GazeSample.confidence must be in [0, 1], got {self.confidence!r}")
        if self.confidence > 0 and not (math.isfinite(self.x) and math.isfinite(self.y)):
            raise ValueError(
                f"GazeSample x, y must be finite, got ({self.x}, {self.y}); "
                "mark a lost sample with confidence 0 instead"
            )

    @property
    def xy(self) -> tuple[float, float]:
        return (self.x, self.y)


def _units_comment(line: str) -> str | None:
    match = _UNITS_RE.match(line)
    if match is None:
        return None
    name = match.group(1).lower()
    if name not in _UNIT_NAMES:
        raise ValueError(f"unknown units {match.group(1)!r}; write '# units: normalized' or '# units: pixels'")
    return _UNIT_NAMES[name]


def _header(path: Path, lineno: int, row: list[str]) -> list[int]:
    names = [c.strip() for c in row]
    missing = [c for c in COLUMNS if c not in names]
    unknown = [c for c in names if c not in COLUMNS]
    if missing or unknown or len(names) != len(COLUMNS):
        raise ValueError(
            f"{path}:{lineno}: header must name the columns {','.join(COLUMNS)}, got {','.join(names)!r}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unknown {unknown})" if unknown else "")
        )
    return [names.index(c) for c in COLUMNS]


def _row(path: Path, lineno: int, row: list[str], order: list[int]) -> tuple[int, float, float, float]:
    if len(row) != len(COLUMNS):
        raise ValueError(f"{path}:{lineno}: expected {len(COLUMNS)} fields ({','.join(COLUMNS)}), got {len(row)}")
    t_text, x_text, y_text, c_text = (row[i].strip() for i in order)
    try:
        t_ns = int(t_text)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: timestamp_ns must be an integer (ns), got {t_text!r}") from None
    if not 0 <= t_ns < 2**63:
        raise ValueError(f"{path}:{lineno}: timestamp_ns {t_ns} is outside [0, 2**63) ns")
    try:
        conf = float(c_text)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: confidence must be a number in [0, 1], got {c_text!r}") from None
    if not 0.0 <= conf <= 1.0:
        raise ValueError(f"{path}:{lineno}: confidence must be in [0, 1], got {c_text!r}")
    xy = []
    for name, text in (("x", x_text), ("y", y_text)):
        try:
            value = float(text) if text else math.nan
        except ValueError:
            raise ValueError(f"{path}:{lineno}: {name} must be a number, got {text!r}") from None
        if not math.isfinite(value) and (conf > 0 or math.isinf(value)):
            raise ValueError(
                f"{path}:{lineno}: {name} is {text!r}; give a finite number, or confidence 0 for a lost sample"
            )
        xy.append(value)
    return t_ns, xy[0], xy[1], conf


def read_gaze_csv(path: str | Path, frame_hw: tuple[int, int] | None = None) -> list[GazeSample]:
    """Read a gaze CSV (rules in the module docstring) into samples in scene-camera pixels.

    ``frame_hw``: (height, width) of the scene camera, needed for normalised files. Raises
    ``ValueError`` naming the file, the line number and the problem; ``FileNotFoundError`` when
    the file does not exist.
    """
    path = Path(path)
    units: str | None = None
    order: list[int] | None = None
    rows: list[tuple[int, float, float, float]] = []
    if not path.is_file():
        raise FileNotFoundError(f"gaze CSV not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {exc.start}); a gaze CSV is text with the header "
                         f"{','.join(COLUMNS)}") from None
    if "\x00" in text:
        raise ValueError(f"{path}: holds NUL bytes, so it is not a text CSV; export the gaze as {','.join(COLUMNS)}")
    for lineno, line in enumerate(text.splitlines(keepends=True), start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            try:
                found = _units_comment(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from None
            if found is not None and units is not None and found != units:
                raise ValueError(f"{path}:{lineno}: units given twice ({units} and {found}); keep one")
            units = found or units
            continue
        try:
            row = next(csv.reader([line]))
        except csv.Error as exc:
            raise ValueError(f"{path}:{lineno}: not CSV ({exc})") from None
        if order is None:
            order = _header(path, lineno, row)
            continue
        t_ns, x, y, conf = _row(path, lineno, row, order)
        if rows and t_ns <= rows[-1][0]:
            raise ValueError(
                f"{path}:{lineno}: timestamp_ns {t_ns} is not after the previous one ({rows[-1][0]}); "
                "timestamps must strictly increase (sort the file)"
            )
        rows.append((t_ns, x, y, conf))
    if order is None:
        raise ValueError(f"{path}: no header found; the first line must be {','.join(COLUMNS)}")
    finite = [v for r in rows for v in r[1:3] if math.isfinite(v)]
    if units is None:
        units = "normalized" if finite and all(0.0 <= v <= 1.0 for v in finite) else "pixels"
    elif units == "normalized" and finite and max(abs(v) for v in finite) > NORMALIZED_LIMIT:
        raise ValueError(f"{path}: '# units: normalized' but values reach {max(finite, key=abs):g}, which look like "
                         "pixels; write '# units: pixels' (normalised values lie in [0, 1])")
    sx = sy = 1.0
    if units == "normalized":
        if frame_hw is None:
            raise ValueError(
                f"{path}: gaze is normalised ([0, 1]); pass frame_hw=(height, width) to convert to pixels, "
                "or add '# units: pixels' if the values really are pixels"
            )
        sy, sx = float(frame_hw[0]), float(frame_hw[1])
    return [GazeSample(t, x * sx, y * sy, c) for t, x, y, c in rows]


def write_gaze_csv(path: str | Path, samples: list[GazeSample]) -> None:
    """Write ``samples`` (pixels) as a gaze CSV with a ``# units: pixels`` line."""
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        fh.write("# units: pixels\n" + ",".join(COLUMNS) + "\n")
        for s in samples:
            fh.write(f"{s.timestamp_ns},{s.x!r},{s.y!r},{s.confidence!r}\n")
