"""Input readers of ``arsel lift`` / ``arsel fuse``: depth, colour and mask images checked against
each other and the intrinsics; frame folders paired into (colour, depth); per-frame mask files.

Every reader raises one error naming the file, what is wrong and how to fix it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.cli_common import UsageError
from engine.stream.sources import _natural_key
from engine.types import CameraIntrinsics
from engine.validate import depth_array, depth_units, same_hw

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".exr")
COLOR_DIRS = ("color", "rgb", "image")


def _usage(msg: str) -> Exception:
    return UsageError(msg)


def _read_unchanged(path: Path, what: str) -> np.ndarray:
    """An image file as stored (any bit depth, channels as in the file); ``what`` names it in errors."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot decode {what} {path} (corrupt file or unsupported format)")
    return image


def read_depth(path: str | Path, intrinsics: CameraIntrinsics) -> np.ndarray:
    """HxW raw depth (uint16 or float) from an image file, checked against the intrinsics' size."""
    path = Path(path)
    depth = _read_unchanged(path, "depth image")
    depth_array(f"depth image {path}", depth)
    same_hw(f"depth image {path}", depth.shape, "the intrinsics are", (intrinsics.height, intrinsics.width),
            "pass the intrinsics of the pixel grid the depth is on (the colour camera's once depth is aligned to colour)")
    depth_units(f"depth image {path}", depth, intrinsics.depth_scale_m)
    return depth


def read_color(path: str | Path, depth_hw: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 RGB, checked to be the depth image's size (registered to it)."""
    from engine.imageio import load_rgb

    rgb = load_rgb(Path(path))
    same_hw(f"colour image {path}", rgb.shape, "the depth is", depth_hw,
            "register (align) depth to colour at one resolution first")
    return rgb


def read_mask(path: str | Path, depth_hw: tuple[int, int]) -> np.ndarray:
    """HxW bool (nonzero = object) from a single-channel image of the depth image's size."""
    path = Path(path)
    mask = _read_unchanged(path, "mask")
    if mask.ndim != 2:
        raise ValueError(f"mask {path} has {mask.shape[2]} channels; save it as a single-channel PNG "
                         "(0 = background, nonzero = object), as `arsel segment` writes")
    same_hw(f"mask {path}", mask.shape, "the depth is", depth_hw, "resize it (nearest neighbour) to the depth image")
    return mask != 0


# ---------------------------------------------------------------------------- frame folders
def _images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def _read_match(root: Path, match: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for lineno, line in enumerate(match.read_text().splitlines(), start=1):
        if line.strip():
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{match}:{lineno}: expected 'depth/NAME color/NAME', got {line!r}")
            pairs.append((root / parts[1], root / parts[0]))
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{match} lists {missing[0]}, which does not exist")
    return pairs


def frame_pairs(root: str | Path) -> list[tuple[Path, Path]]:
    """(colour, depth) paths of a frames folder, in frame order.

    An ``rgbd.match`` file (lines ``depth/NAME.png color/NAME.jpg``) fixes the pairs and order;
    otherwise ``color/`` (or ``rgb/``, ``image/``) and ``depth/`` images pair by file stem, sorted
    naturally (``2`` before ``10``).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"frames folder not found: {root}")
    match = root / "rgbd.match"
    if match.is_file():
        return _read_match(root, match)
    color_dir = next((root / d for d in COLOR_DIRS if (root / d).is_dir()), None)
    if color_dir is None or not (root / "depth").is_dir():
        found = sorted(p.name + "/" for p in root.iterdir() if p.is_dir())
        raise ValueError(f"{root} must hold color/ (or rgb/) and depth/ image folders; found {found or 'none'}")
    colors, depths = _images(color_dir), _images(root / "depth")
    stems = sorted(set(colors) & set(depths), key=lambda s: _natural_key(colors[s]))
    if not stems:
        raise ValueError(f"no colour image in {color_dir} shares a file name with a depth image in {root / 'depth'}; "
                         f"pair them in {match} (lines 'depth/NAME.png color/NAME.jpg')")
    alone = len(colors) + len(depths) - 2 * len(stems)
    if alone:
        warnings.warn(f"{alone} images in {root} without a colour/depth partner are skipped", stacklevel=2)
    return [(colors[s], depths[s]) for s in stems]


def mask_paths(masks: Path, frames: Sequence[tuple[int, Path]]) -> list[Path]:
    """The mask file of each ``(frame index, colour path)``, by one naming scheme for the whole run.

    By colour stem (``NAME.png`` for ``color/NAME.jpg``) when every frame has one; otherwise by
    frame index (``NNNNN.png``, as ``arsel track`` writes). Mixing the two per frame would pair
    colour ``00001.jpg`` with mask ``00001.png`` and a later frame with a mask by index.

    Raises:
        UsageError: both schemes cover every frame but the stems are not the indices (which
            mask belongs to which frame is ambiguous).
        FileNotFoundError: neither scheme covers every frame (names the first frame missing).
    """
    by_stem = [masks / f"{color.stem}.png" for _, color in frames]
    by_index = [masks / f"{i:05d}.png" for i, _ in frames]
    stem_ok, index_ok = all(p.is_file() for p in by_stem), all(p.is_file() for p in by_index)
    if stem_ok and index_ok and by_stem != by_index:
        raise _usage(f"{masks} has masks named both by colour image (e.g. {by_stem[0].name}) and by frame index "
                     f"(e.g. {by_index[0].name}) and they differ; keep one set (arsel track writes NNNNN.png by "
                     "frame index, counting from 0)")
    if stem_ok:
        return by_stem
    if index_ok:
        return by_index
    ks = next(k for k, p in enumerate(by_stem) if not p.is_file())
    ki = next(k for k, p in enumerate(by_index) if not p.is_file())
    if ks == ki:
        i, color = frames[ks]
        raise FileNotFoundError(f"no mask for frame {i} ({color.name}): looked for {by_stem[ks].name} (by colour "
                                f"name) and {by_index[ks].name} (by frame index) in {masks}")
    raise FileNotFoundError(
        f"the masks in {masks} cover every frame by neither naming scheme: by colour name, frame {frames[ks][0]} "
        f"({frames[ks][1].name}) has no {by_stem[ks].name}; by frame index, frame {frames[ki][0]} has no "
        f"{by_index[ki].name}; name every mask one way (arsel track writes NNNNN.png by frame index, from 0)"
    )


# ---------------------------------------------------------------------------- fusion frames
@dataclass
class FrameReads:
    """Counters of :func:`iter_fusion_frames`: frames yielded and seconds spent reading them."""

    used: int = 0
    read_s: float = 0.0


def iter_fusion_frames(
    pairs: Sequence[tuple[Path, Path]],
    poses: Sequence[np.ndarray],
    masks: Sequence[Path] | None,
    picked: Sequence[int],
    intrinsics: CameraIntrinsics,
    reads: FrameReads,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]]:
    """Fusion frames ``(rgb HxWx3 uint8, depth_raw HxW, mask HxW bool | None, pose 4x4)`` of the
    ``picked`` frame indices, read one at a time (only the frame being fused is in memory).
    ``masks[k]`` is the mask of ``picked[k]``; ``reads`` counts what was read."""
    for k, i in enumerate(picked):
        t0 = time.perf_counter()
        color, depth_path = pairs[i]
        depth = read_depth(depth_path, intrinsics)
        rgb = read_color(color, depth.shape)
        mask = None if masks is None else read_mask(masks[k], depth.shape)
        reads.used += 1
        reads.read_s += time.perf_counter() - t0
        yield rgb, depth, mask, poses[i]
