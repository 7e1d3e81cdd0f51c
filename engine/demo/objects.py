"""What ``arsel demo`` gathers per selected object (:class:`ObjectLog`) and how it is measured:
the gravity-aligned box of a fused surface (:func:`upright_box`), the largest mesh piece
(:func:`largest_component`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.lift.fusion import FusionFrame
from engine.lift.single import LiftResult


@dataclass
class ObjectLog:
    """What the demo gathered about one selected object (engine object id ``object_id``).

    ``overlap``: per frame selected, (K+1,) intersection and (K+1,) union pixel counts of the mask
    with each true object id (synthetic only); ``fusion``: frames for TSDF (lifted pixels as mask),
    every ``fusion_stride``-th of the ``fusion_seen`` offered to :meth:`add_fusion`; ``visible``:
    per fusion frame (synthetic only), ``{true object id: ((N, 3), (M, 3)) float32 world points of
    its surface seen in that frame, and of the part inside the mask}`` for the true objects the
    mask overlaps.
    """

    object_id: int
    frames_selected: int = 0
    fusion: list[FusionFrame] = field(default_factory=list)
    fusion_seen: int = 0
    fusion_stride: int = 1
    inter: list[np.ndarray] = field(default_factory=list)
    union: list[np.ndarray] = field(default_factory=list)
    best: LiftResult | None = None
    live_extent_m: np.ndarray | None = None
    visible: list[dict[int, tuple[np.ndarray, np.ndarray]]] = field(default_factory=list)

    def add_truth(self, mask: np.ndarray, truth_ids: np.ndarray, n_true: int) -> None:
        area_true = np.bincount(truth_ids.ravel(), minlength=n_true + 1)[: n_true + 1]
        inter = np.bincount(truth_ids[mask], minlength=n_true + 1)[: n_true + 1]
        self.inter.append(inter)
        self.union.append(area_true + int(mask.sum()) - inter)

    def add_fusion(self, frame: FusionFrame, keep: int,
                   visible: dict[int, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        """Offer a fusion frame; keeps ``keep`` to ``2 * keep - 1`` of all offered, evenly spread.

        Kept are the offered frames number 0, s, 2s, ... (s = ``fusion_stride``): at ``2 * keep``
        every second is dropped and s doubles, so later frames come in at the same spacing.
        """
        seen, self.fusion_seen = self.fusion_seen, self.fusion_seen + 1
        if seen % self.fusion_stride:
            return
        self.fusion.append(frame)
        self.visible.append(visible or {})
        if len(self.fusion) >= 2 * keep:
            self.fusion, self.visible = self.fusion[::2], self.visible[::2]
            self.fusion_stride *= 2

    def visible_points_m(self, true_id: int, in_mask: bool = False) -> np.ndarray | None:
        """(N, 3) world points of true object ``true_id`` seen in the fused frames (``in_mask``:
        only where the masks covered it); None without truth."""
        parts = [v[true_id][int(in_mask)] for v in self.visible if true_id in v]
        return np.concatenate(parts) if parts and sum(len(p) for p in parts) else None

    def true_id(self) -> int | None:
        """The true object its masks overlap most (None without truth or overlap)."""
        if not self.inter:
            return None
        votes = np.sum(self.inter, axis=0)
        votes[0] = 0
        return int(np.argmax(votes)) if votes.max() > 0 else None

    def mean_iou(self, true_id: int) -> float:
        return float(np.mean([i[true_id] / max(1, u[true_id]) for i, u in zip(self.inter, self.union)]))


def upright_box(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gravity-aligned oriented box of (N, 3) world points (z up): the minimum-area rectangle of
    the x-y footprint (OpenCV ``minAreaRect``) times the z range. Returns (center (3,), extent (3,))
    in metres: footprint side, footprint side, height. For objects on a table this measures what a
    tape would; a PCA box of a partial surface tilts and mixes the sides."""
    import cv2

    (cx, cy), (w, h), _ = cv2.minAreaRect(np.ascontiguousarray(points[:, :2], np.float32).reshape(-1, 1, 2))
    z_lo, z_hi = float(points[:, 2].min()), float(points[:, 2].max())
    return np.array([cx, cy, (z_lo + z_hi) / 2]), np.array([w, h, z_hi - z_lo])


def largest_component(mesh: Any) -> Any:
    """Keep the largest connected triangle cluster of a legacy Open3D mesh (drops stray fragments)."""
    if len(mesh.triangles) == 0:
        return mesh
    labels, counts, _ = mesh.cluster_connected_triangles()
    labels = np.asarray(labels)
    mesh.remove_triangles_by_mask(labels != int(np.argmax(np.asarray(counts))))
    mesh.remove_unreferenced_vertices()
    return mesh
