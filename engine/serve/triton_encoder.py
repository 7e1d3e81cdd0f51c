"""Keyframe encodes on a Triton Inference Server (``--encoder-url triton://HOST:PORT``), over gRPC.

:class:`TritonEncoderBackend` is a ``Backend`` whose ``encode`` sends the preprocessed image to the
``encoder`` model of the repository ``arsel export MODEL --triton-repo DIR`` writes (Triton's own
dynamic batcher stacks keyframes of all streams) and whose ``decode`` runs on the local backend.
The request/response mapping (:func:`encoder_request`, :func:`encoder_embedding`) is tested here;
a real Triton server is not exercised in this project's CI (none can run on its machines).
``tritonclient[grpc]`` is imported here only (``pip install 'arsel[ray]'``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import numpy as np

from engine.contract import EMBED_DIM, EMBED_HW, ENCODER_INPUT, ENCODER_OUTPUT

TRITON_ENCODER_MODEL = "encoder"


def triton_address(url: str) -> str:
    """``triton://HOST:PORT`` -> ``HOST:PORT`` (Triton's gRPC endpoint); ValueError naming the fix."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "triton" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ValueError(f"--encoder-url {url!r}: expected triton://HOST:PORT, the gRPC port of a Triton "
                         "server (8001 by default) serving the repository of `arsel export --triton-repo`")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


def encoder_request(image: np.ndarray, side: int) -> Any:
    """``(1, 3, side, side)`` float32 -> the ``InferInput`` named ``image`` (FP32, batch axis first)."""
    import tritonclient.grpc as grpcclient

    if image.shape != (1, 3, side, side):
        raise ValueError(f"encoder input must be (1, 3, {side}, {side}), got {image.shape}: "
                         "preprocess with engine.transforms.preprocess")
    x = np.ascontiguousarray(image, np.float32)
    request = grpcclient.InferInput(ENCODER_INPUT, list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    return request


def encoder_embedding(result: Any) -> np.ndarray:
    """A Triton ``InferResult`` -> ``(1, 256, 64, 64)`` float32 (a writable copy); ValueError otherwise."""
    out = result.as_numpy(ENCODER_OUTPUT)
    expected = (1, EMBED_DIM, *EMBED_HW)
    if out is None or out.shape != expected or out.dtype != np.float32:
        got = None if out is None else (out.dtype, out.shape)
        raise ValueError(f"Triton's {TRITON_ENCODER_MODEL!r} answered {got} for {ENCODER_OUTPUT!r}, expected "
                         f"float32 {expected}: serve the repository of `arsel export --triton-repo` (fp32 output)")
    return np.array(out, np.float32, copy=True)


class TritonEncoderBackend:
    """A ``Backend``: ``encode`` on Triton's ``encoder`` model, everything else on ``local``."""

    def __init__(self, url: str, local: Any, timeout_s: float = 60.0, model: str = TRITON_ENCODER_MODEL) -> None:
        import tritonclient.grpc as grpcclient

        self.url = url
        self._client = grpcclient.InferenceServerClient(triton_address(url))
        self._outputs = [grpcclient.InferRequestedOutput(ENCODER_OUTPUT)]
        self._local = local
        self._model = model
        self._timeout_s = timeout_s
        self.input_size = local.input_size

    def encode(self, image: np.ndarray) -> np.ndarray:
        """``(1, 3, S, S)`` float32 -> ``(1, 256, 64, 64)`` float32, encoded by Triton."""
        result = self._client.infer(self._model, [encoder_request(image, self.input_size)], outputs=self._outputs,
                                    client_timeout=self._timeout_s)
        return encoder_embedding(result)

    def __getattr__(self, name: str) -> Any:  # decode, describe, upsample, ...: the local backend's
        return getattr(self._local, name)
