"""A shared, batching keyframe encoder as a Ray Serve deployment, and the backend that calls it.

:class:`BatchedEncoder` (a ``@serve.deployment``) loads the model's torch encoder once per replica
and runs keyframe encodes from every caller in batches: ``@serve.batch`` collects up to
``max_batch`` calls that arrive within ``batch_wait_s`` and runs them as one ``(b, 3, S, S)``
forward pass. It counts the batch sizes it ran (``batch_histogram``).

:class:`RemoteEncoderBackend` is the seam the stream engine already has: a ``Backend`` whose
``encode`` calls the deployment and whose ``decode`` runs on the local backend, so the per-frame
decode never waits on a network hop. The gateways of ``arsel serve --ray`` use it
(``engine.serve.ray_gateway``).

Ray is imported only here (``pip install 'arsel[ray]'``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

__all__ = ["BatchedEncoder", "RemoteEncoderBackend"]


@serve.deployment(ray_actor_options={"num_cpus": 1})
class BatchedEncoder:
    """Batched keyframe encodes: ``encode(image (1, 3, S, S) float32)`` -> ``(1, 256, 64, 64)`` float32.

    ``image`` is the preprocessed, normalised, padded input of ``engine.transforms.preprocess``.
    """

    def __init__(self, model: str, checkpoint: str | None = None, max_batch: int = 8, batch_wait_s: float = 0.01,
                 threads: int | None = None) -> None:
        import torch

        from engine.models.registry import get_spec, load_model
        from engine.weights import resolve

        if threads:
            torch.set_num_threads(threads)
        self.side = get_spec(model).input_size
        self.model = load_model(model, resolve(model, Path(checkpoint) if checkpoint else None)).eval()
        self.encode.set_max_batch_size(max_batch)
        self.encode.set_batch_wait_timeout_s(batch_wait_s)
        self.sizes: Counter[int] = Counter()

    def _check(self, image: np.ndarray) -> None:
        if image.shape != (1, 3, self.side, self.side) or image.dtype != np.float32:
            raise ValueError(f"encoder input must be float32 (1, 3, {self.side}, {self.side}), "
                             f"got {image.dtype} {image.shape}: preprocess with engine.transforms.preprocess")

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def encode(self, images: list[np.ndarray]) -> list[np.ndarray]:
        for image in images:
            self._check(image)
        # on a thread: the replica's event loop keeps answering (batch_histogram, /healthz) meanwhile
        out = await asyncio.to_thread(self._forward, np.concatenate(images))
        self.sizes[len(images)] += 1
        return [out[i:i + 1].copy() for i in range(len(images))]

    def _forward(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model.image_encoder(torch.from_numpy(x)).numpy()

    def batch_histogram(self) -> dict[int, int]:
        """Batch size -> how many batches of that size this replica ran."""
        return dict(sorted(self.sizes.items()))


class RemoteEncoderBackend:
    """A ``Backend``: ``encode`` on a :class:`BatchedEncoder` deployment, everything else on ``local``.

    ``handle``: a ``DeploymentHandle`` of ``BatchedEncoder``; ``timeout_s`` bounds one remote encode.
    """

    def __init__(self, handle: Any, local: Any, timeout_s: float = 60.0) -> None:
        self._handle = handle
        self._local = local
        self._timeout_s = timeout_s
        self.input_size = local.input_size

    def encode(self, image: np.ndarray) -> np.ndarray:
        """``(1, 3, S, S)`` float32 -> ``(1, 256, 64, 64)`` float32 (a writable copy of Ray's read-only result)."""
        out = self._handle.encode.remote(np.ascontiguousarray(image, np.float32)).result(timeout_s=self._timeout_s)
        return np.array(out, np.float32, copy=True)

    def __getattr__(self, name: str) -> Any:  # decode, describe, upsample, ...: the local backend's
        return getattr(self._local, name)
