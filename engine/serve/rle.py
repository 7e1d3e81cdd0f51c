"""COCO run-length encoding of masks, byte-for-byte as ``pycocotools.mask.encode`` writes it.

A mask ``(H, W)`` is read column-major (Fortran order); ``counts`` alternate runs of 0 and 1,
starting with 0 (a leading zero-length run when the first pixel is set). The compressed string
codes each count (minus the count two back, from the fourth on) in 5-bit groups, low first, with
0x20 as "more follows" and the last group's 0x10 as the sign, each plus 48 (``maskApi.c rleToString``).
"""

from __future__ import annotations

import numpy as np


def mask_counts(mask: np.ndarray) -> np.ndarray:
    """Uncompressed COCO run lengths of a bool/0-1 ``(H, W)`` mask, int64 ``(K,)``.

    Only the columns from the first to the last set one are scanned; the all-zero columns on
    either side join the first and last zero runs (a mask a third of the frame wide costs a third).
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    m = np.asarray(mask, bool)
    h, w = m.shape
    if m.size == 0:
        return np.zeros(0, np.int64)
    cols = np.flatnonzero(m.any(axis=0))
    if cols.size == 0:
        return np.array([h * w], np.int64)
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    flat = m[:, x0:x1].ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], change, [flat.size]))).astype(np.int64)
    if flat[0]:  # the first run is ones: the zero run before it is the empty columns (0 when x0 == 0)
        counts = np.concatenate(([x0 * h], counts))
    else:
        counts[0] += x0 * h
    tail = (w - x1) * h
    if tail and flat[-1]:
        counts = np.concatenate((counts, [tail]))
    elif tail:
        counts[-1] += tail
    return counts


def counts_to_string(counts: np.ndarray) -> str:
    """Compress run lengths into the COCO ``counts`` string (vectorised: one pass per 5-bit group)."""
    values = np.asarray(counts, np.int64)
    x = values.copy()
    x[3:] -= values[1:-2]  # from the fourth on, each count minus the one two back
    live = np.ones(x.shape, bool)  # counts with a group still to write
    columns = []
    while live.any():
        c = x & 0x1F
        x >>= 5  # arithmetic: a negative count ends at -1
        more = live & np.where(c & 0x10, x != -1, x != 0)
        columns.append(np.where(live, (c | np.where(more, 0x20, 0)) + 48, 0))
        live = more
    if not columns:
        return ""
    groups = np.stack(columns, axis=1).ravel()  # each count's groups in order, 0 where it had ended
    return groups[groups > 0].astype(np.uint8).tobytes().decode("ascii")


def string_to_counts(text: str) -> np.ndarray:
    """Inverse of :func:`counts_to_string` (``maskApi.c rleFrString``)."""
    data = text.encode("ascii")
    counts: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("truncated COCO RLE counts string")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return np.asarray(counts, np.int64)


def encode_rle(mask: np.ndarray) -> dict[str, object]:
    """``{"size": [h, w], "counts": str}`` of a ``(H, W)`` mask, as pycocotools (counts as str)."""
    h, w = int(mask.shape[0]), int(mask.shape[1])
    return {"size": [h, w], "counts": counts_to_string(mask_counts(mask))}


def decode_rle(rle: dict[str, object]) -> np.ndarray:
    """COCO RLE (``counts`` a string or a list of ints) -> bool ``(H, W)`` mask."""
    h, w = (int(v) for v in rle["size"])  # type: ignore[union-attr]
    raw = rle["counts"]
    counts = string_to_counts(raw) if isinstance(raw, str) else np.asarray(raw, np.int64)
    if counts.size and (np.any(counts < 0) or int(counts.sum()) != h * w):
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected h*w = {h * w}")
    values = np.arange(counts.size) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy() if flat.size else np.zeros((h, w), bool)
