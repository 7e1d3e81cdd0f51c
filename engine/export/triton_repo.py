"""A Triton Inference Server model repository of one model: ``encoder`` and ``decoder``.

Layout written by ``write_triton_repo``::

    repo/encoder/config.pbtxt     onnxruntime_onnx, max_batch_size B, dynamic batching, instance group
    repo/encoder/1/model.onnx     image float32 (b, 3, S, S) -> image_embeddings float32 (b, 256, 64, 64)
    repo/decoder/config.pbtxt     onnxruntime_onnx, max_batch_size 0 (shapes given in full)
    repo/decoder/1/model.onnx     the ``engine.contract`` decoder: dynamic prompts B and points N
    repo/triton_export.json       checkpoint sha256, parity figures, the options used

The encoder here differs from ``arsel export``'s in one way: its batch axis ``b`` is dynamic, so
Triton's dynamic batcher can stack keyframes from many streams into one run (``b`` <= B). Triton
prepends the batch axis itself, so the config's dims leave it out.

The decoder cannot use Triton's batcher: its ``image_embeddings`` has batch 1 while its prompt
axis ``B`` is free, and Triton batches along one leading axis shared by every input. So it is
declared with ``max_batch_size: 0`` and full shapes, ``-1`` marking ``B`` and ``N``.

The configs are plain protobuf text (no ``tritonclient`` needed to write them); the tests parse them
with ``tritonclient.grpc.model_config_pb2`` and check them against the ONNX graphs. Serving them from
a Triton server is not exercised in this project's CI (no Triton server or GPU there).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engine.contract import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    EMBED_DIM,
    EMBED_HW,
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    LOW_RES_HW,
    NUM_MASK_TOKENS,
)
from engine.export.common import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    ExportError,
    check_onnx,
    declare_output_dims,
    ort_session,
    torch_to_onnx,
)
from engine.models.registry import ModelSpec
from engine.models.sam import SamModel

__all__ = ["TritonRepoResult", "decoder_config", "encoder_config", "export_batched_encoder", "write_triton_repo"]

ENCODER_MODEL = "encoder"
DECODER_MODEL = "decoder"
MAX_QUEUE_DELAY_US = 2000  # how long Triton may hold a keyframe to fill a batch (2 ms << one frame)


@dataclass(frozen=True, slots=True)
class TritonRepoResult:
    """Outcome of ``write_triton_repo``: its options and the ONNX Runtime vs torch parity.

    ``encoder_max_abs_diff``: max ``|ONNX Runtime batch - torch one image at a time|`` over a batch of 2.
    """

    model: str
    max_batch: int
    fp16: bool
    encoder_max_abs_diff: float
    decoder_max_abs_diff: float
    model_sha256: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _preferred_batch_sizes(max_batch: int) -> list[int]:
    """Powers of two from 2 up to ``max_batch``, and ``max_batch`` itself: ``8 -> [2, 4, 8]``."""
    sizes = [b for b in (2, 4, 8, 16, 32, 64) if b < max_batch]
    return [*sizes, max_batch] if max_batch > 1 else []


def _tensor(name: str, dims: tuple[int, ...]) -> str:
    return f'  {{ name: "{name}" data_type: TYPE_FP32 dims: [ {", ".join(str(d) for d in dims)} ] }}'


def _io_block(kind: str, tensors: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]"


def _instance_group(instances: int, kind: str) -> str:
    return f"instance_group [ {{ count: {instances} kind: {kind} }} ]"


def encoder_config(side: int, max_batch: int, instances: int = 1, kind: str = "KIND_GPU") -> str:
    """``config.pbtxt`` of the encoder: batch axis implicit (Triton's), ``max_batch`` and the batcher."""
    preferred = ", ".join(str(b) for b in _preferred_batch_sizes(max_batch))
    return "\n".join([
        f'name: "{ENCODER_MODEL}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch}",
        _io_block("input", [_tensor(ENCODER_INPUT, (3, side, side))]),
        _io_block("output", [_tensor(ENCODER_OUTPUT, (EMBED_DIM, *EMBED_HW))]),
        f"dynamic_batching {{ preferred_batch_size: [ {preferred} ] max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US} }}",
        _instance_group(instances, kind),
        "",
    ])


DECODER_DIMS: dict[str, tuple[int, ...]] = {  # -1: the dynamic prompt axis B and point axis N
    "image_embeddings": (1, EMBED_DIM, *EMBED_HW),
    "point_coords": (-1, -1, 2),
    "point_labels": (-1, -1),
    "mask_input": (-1, 1, *LOW_RES_HW),
    "has_mask_input": (-1,),
    "iou_predictions": (-1, NUM_MASK_TOKENS),
    "low_res_masks": (-1, NUM_MASK_TOKENS, *LOW_RES_HW),
}


def decoder_config(instances: int = 1, kind: str = "KIND_GPU") -> str:
    """``config.pbtxt`` of the decoder: ``max_batch_size: 0``, full shapes with ``-1`` for B and N."""
    return "\n".join([
        f'name: "{DECODER_MODEL}"',
        'platform: "onnxruntime_onnx"',
        "max_batch_size: 0",
        _io_block("input", [_tensor(n, DECODER_DIMS[n]) for n in DECODER_INPUTS]),
        _io_block("output", [_tensor(n, DECODER_DIMS[n]) for n in DECODER_OUTPUTS]),
        _instance_group(instances, kind),
        "",
    ])


def export_batched_encoder(model: SamModel, spec: ModelSpec, path: Path, opset: int = 17, fp16: bool = False) -> Path:
    """Encoder ONNX with a dynamic batch axis: ``image (b, 3, S, S)`` -> ``image_embeddings (b, 256, 64, 64)``.

    Traced at b = 2 so the tracer cannot bake a batch of 1 into a reshape. ``fp16`` as ``export_encoder``.
    """
    from engine.export.onnx_export import _EncoderGraph, convert_fp16

    side = spec.input_size
    dummy = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    axes = {ENCODER_INPUT: {0: "batch"}, ENCODER_OUTPUT: {0: "batch"}}
    torch_to_onnx(_EncoderGraph(model).eval(), (dummy,), path, opset,
                  input_names=[ENCODER_INPUT], output_names=[ENCODER_OUTPUT], dynamic_axes=axes)
    declare_output_dims(path, {ENCODER_OUTPUT: (None, EMBED_DIM, *EMBED_HW)})
    if fp16:
        convert_fp16(path)
    return path


def _compare_batched(model: SamModel, path: Path, images: np.ndarray, fp16: bool) -> tuple[float, np.ndarray]:
    """ONNX Runtime on the batch ``images (b, 3, S, S)`` vs torch one image at a time; raises over the limit."""
    out = ort_session(path).run([ENCODER_OUTPUT], {ENCODER_INPUT: images})[0]
    with torch.inference_mode():
        ref = np.concatenate([model.encode(torch.from_numpy(images[i:i + 1])).numpy() for i in range(len(images))])
    diff = float(np.abs(out - ref).max())
    limit = FP16_TOLERANCE * float(np.abs(ref).max()) if fp16 else FP32_TOLERANCE
    if not diff <= limit:
        raise ExportError(f"batched encoder {path}: ONNX Runtime differs from torch by {diff:.3g} (limit {limit:.3g});"
                          " re-export with another --opset, or report the model and versions")
    return diff, ref[:1]


def write_triton_repo(  # noqa: PLR0913 - the CLI's options, passed through
    name: str, repo: Path, checkpoint: Path, opset: int = 17, fp16: bool = False, max_batch: int = 8,
    instances: int = 1, progress: bool = True,
) -> TritonRepoResult:
    """Write the Triton repository of ``name`` into the (empty or new) folder ``repo``; see the module doc.

    Both graphs pass ``onnx.checker`` and are compared with torch in ONNX Runtime (CPU) first: the
    encoder on a batch of 2 against torch one image at a time, the decoder on three prompt shapes.
    """
    from tqdm.auto import tqdm

    from engine.export.onnx_export import _sample_image, compare_decoder, export_decoder
    from engine.export.prompts import realistic_prompts
    from engine.models.registry import get_spec, load_model
    from engine.weights import sha256_file

    spec = get_spec(name)
    enc_path, dec_path = repo / ENCODER_MODEL / "1" / "model.onnx", repo / DECODER_MODEL / "1" / "model.onnx"
    for p in (enc_path, dec_path):
        p.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=4, desc=f"triton repo {name}", disable=not progress, unit="step") as bar:
        model = load_model(name, checkpoint)
        bar.update(1)
        export_batched_encoder(model, spec, enc_path, opset, fp16)
        check_onnx(enc_path)
        image = _sample_image(spec.input_size, spec)
        images = np.concatenate([image, np.ascontiguousarray(image[..., ::-1])])  # two different images
        enc_diff, embedding = _compare_batched(model, enc_path, images, fp16)
        bar.update(1)
        export_decoder(model, dec_path, opset)
        check_onnx(dec_path)
        dec_diff = max(
            compare_decoder(model, dec_path, embedding, realistic_prompts(b, n, spec.input_size, seed=b * 31 + n))
            for b, n in ((1, 1), (1, 5), (4, 16))
        )
        bar.update(1)
        (repo / ENCODER_MODEL / "config.pbtxt").write_text(encoder_config(spec.input_size, max_batch, instances))
        (repo / DECODER_MODEL / "config.pbtxt").write_text(decoder_config(instances))
        bar.update(1)
    result = TritonRepoResult(name, max_batch, fp16, enc_diff, dec_diff, sha256_file(checkpoint))
    (repo / "triton_export.json").write_text(result.to_json())
    return result
