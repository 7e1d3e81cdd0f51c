"""torch -> ONNX export of the encoder and the decoder, with the tensor names of ``engine.contract``.

Encoder ONNX: ``image`` float32 ``(1, 3, S, S)`` -> ``image_embeddings`` float32 ``(1, 256, 64, 64)``,
no dynamic axes. Decoder ONNX: the five ``DECODER_INPUTS`` -> ``iou_predictions (B, 4)``,
``low_res_masks (B, 4, 256, 256)`` with dynamic prompt batch ``B`` and point count ``N``; the image
embedding is fixed ``(1, 256, 64, 64)``; upsampling to the original size stays outside the graph.

``export_model`` writes both, runs ``onnx.checker`` on each, runs each once in ONNX Runtime and
compares with torch before it reports success. ``export_model`` also writes an internal no-mask
decoder pair (``engine.export.no_mask``) that ``OrtBackend`` uses for prompts without masks; a
failure there only warns. Uses the TorchScript exporter (``dynamo=False``):
the graphs have no control flow and it needs no ``onnxscript``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn

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
    DECODER_DYNAMIC_AXES,
    FP16_TOLERANCE,
    FP32_OPS,
    FP32_TOLERANCE,
    ExportError,
    check_onnx,
    declare_output_dims,
    ort_session,
    torch_to_onnx,
)
from engine.export.no_mask import export_no_mask_pair
from engine.export.prompts import realistic_prompts
from engine.models.registry import ModelSpec, get_spec, load_model
from engine.models.sam import SamModel

__all__ = [
    "ExportError", "ExportResult", "compare_decoder", "compare_encoder", "convert_fp16", "export_decoder",
    "export_encoder", "export_model",
]


@dataclass(frozen=True, slots=True)
class ExportResult:
    """Outcome of ``export_model``: file paths, parity with torch and the checkpoint's identity.

    ``*_max_abs_diff``: max ``|ONNX Runtime - torch|`` over one run (embedding; decoder logits and IoU).
    ``model_sha256``: sha256 of the checkpoint file the weights came from.
    """

    model: str
    encoder_path: Path
    decoder_path: Path
    encoder_max_abs_diff: float
    decoder_max_abs_diff: float
    model_sha256: str
    opset: int
    fp16: bool

    def to_json(self) -> str:
        d = asdict(self)
        d["encoder_path"], d["decoder_path"] = str(self.encoder_path), str(self.decoder_path)
        return json.dumps(d, indent=2)


class _EncoderGraph(nn.Module):
    def __init__(self, model: SamModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tensor:
        return self.model.encode(image)


def export_encoder(model: SamModel, spec: ModelSpec, path: Path, opset: int = 17, fp16: bool = False) -> Path:
    """Write the encoder ONNX: ``image (1, 3, S, S)`` float32 -> ``image_embeddings (1, 256, 64, 64)``.

    ``fp16``: the graph computes in float16 except ``FP32_OPS`` (normalisation, softmax, reductions);
    its input and output stay float32. Needs ``onnxconverter-common``.
    """
    path = Path(path)
    side = spec.input_size
    dummy = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    graph = _EncoderGraph(model).eval()
    torch_to_onnx(graph, (dummy,), path, opset, input_names=[ENCODER_INPUT], output_names=[ENCODER_OUTPUT])
    declare_output_dims(path, {ENCODER_OUTPUT: (1, EMBED_DIM, *EMBED_HW)})
    if fp16:
        convert_fp16(path)
    return path


def convert_fp16(path: Path) -> None:
    """Rewrite an fp32 ONNX file in place as mixed fp16 (``FP32_OPS`` kept in fp32, I/O float32)."""
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise ImportError(
            "fp16 export needs onnxconverter-common: pip install onnxconverter-common "
            "(or export fp32 and let TensorRT 10 pick fp16 kernels with `arsel build-engine --fp16`)"
        ) from None
    model = onnx.load(str(path))
    converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP32_OPS))
    # The converter retypes tensors but not the target of Cast nodes already in the graph.
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in converted.graph.value_info}
    for node in converted.graph.node:
        if node.op_type == "Cast" and elem.get(node.output[0]) == onnx.TensorProto.FLOAT16:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                    attr.i = onnx.TensorProto.FLOAT16
    onnx.save(converted, str(path))


def export_decoder(model: SamModel, path: Path, opset: int = 17) -> Path:
    """Write the decoder ONNX with the contract's names and dynamic ``B`` (prompts) and ``N`` (points).

    ``image_embeddings`` is fixed ``(1, 256, 64, 64)``; all tensors float32; no ``orig_im_size``.
    """
    path = Path(path)
    gen = torch.Generator().manual_seed(0)
    b, n = 2, 3  # neither 1 nor equal, so the tracer cannot bake B or N into a shape
    side = model.input_size
    dummy = (
        torch.randn(1, EMBED_DIM, *EMBED_HW, generator=gen),
        torch.rand(b, n, 2, generator=gen) * side,
        torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, -1.0]]),
        torch.randn(b, 1, *LOW_RES_HW, generator=gen),
        torch.tensor([1.0, 0.0]),
    )
    torch_to_onnx(
        model.eval(), dummy, path, opset,
        input_names=list(DECODER_INPUTS), output_names=list(DECODER_OUTPUTS), dynamic_axes=DECODER_DYNAMIC_AXES,
    )
    declare_output_dims(path, {"iou_predictions": (None, NUM_MASK_TOKENS),
                                "low_res_masks": (None, NUM_MASK_TOKENS, *LOW_RES_HW)})
    return path


def compare_encoder(model: SamModel, path: Path, image: np.ndarray, fp16: bool = False) -> tuple[float, np.ndarray]:
    """Run the encoder ONNX once on ``image (1, 3, S, S)``; returns ``(max abs diff, torch embedding)``.

    Raises ``ExportError`` when the diff exceeds ``FP32_TOLERANCE`` (``FP16_TOLERANCE`` relative for fp16).
    """
    with torch.inference_mode():
        ref = model.encode(torch.from_numpy(image)).numpy()
    out = ort_session(path).run([ENCODER_OUTPUT], {ENCODER_INPUT: image})[0]
    diff = float(np.abs(out - ref).max())
    limit = FP16_TOLERANCE * float(np.abs(ref).max()) if fp16 else FP32_TOLERANCE
    if not diff <= limit:
        raise ExportError(
            f"encoder {path}: ONNX Runtime differs from torch by {diff:.3g} (limit {limit:.3g}); "
            "re-export with another --opset, or report the model and versions"
        )
    return diff, ref


def compare_decoder(model: SamModel, path: Path, embedding: np.ndarray, prompts: dict[str, np.ndarray]) -> float:
    """Run the decoder ONNX once; returns max abs diff over both outputs, raises ``ExportError`` > 1e-3."""
    feeds = {"image_embeddings": embedding, **prompts}
    outs = ort_session(path).run(list(DECODER_OUTPUTS), feeds)
    with torch.inference_mode():
        refs = model(*(torch.from_numpy(feeds[k]) for k in DECODER_INPUTS))
    diff = max(float(np.abs(o - r.numpy()).max()) for o, r in zip(outs, refs))
    if not diff <= FP32_TOLERANCE:
        raise ExportError(
            f"decoder {path}: ONNX Runtime differs from torch by {diff:.3g} (limit {FP32_TOLERANCE}); "
            "re-export with another --opset, or report the model and versions"
        )
    return diff


def _sample_image(side: int, spec: ModelSpec) -> np.ndarray:
    """A smooth normalised ``(1, 3, S, S)`` float32 test image in the model's pixel statistics."""
    from engine.transforms import preprocess

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8)
    rgb = cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)
    x, _ = preprocess(rgb, side, spec.pixel_norm, spec.resize)  # type: ignore[arg-type]
    return x


def export_model(
    name: str,
    out_dir: Path,
    checkpoint: Path | None = None,
    opset: int = 17,
    fp16: bool = False,
    progress: bool = True,
) -> ExportResult:
    """Export ``name`` (weights from ``checkpoint``, or ``engine.weights.resolve``) to ``out_dir``.

    Writes ``{name}_encoder[_fp16].onnx``, ``{name}_decoder.onnx`` and ``{name}_export.json`` (the
    ``ExportResult``). Each graph is checked with ``onnx.checker`` and compared with torch in ONNX
    Runtime (CPU); raises ``ExportError`` naming the file and the diff when it is over the limit.
    """
    from tqdm.auto import tqdm

    from engine.weights import resolve, sha256_file

    spec = get_spec(name)
    out_dir = Path(out_dir)
    steps = ["load weights", "export encoder", "check encoder", "compare encoder",
             "export decoder", "check decoder", "compare decoder"]
    bar = tqdm(total=len(steps), desc=f"export {name}", disable=not progress, unit="step")

    def step(i: int) -> None:
        bar.set_postfix_str(steps[i])
        if i:
            bar.update(1)

    try:
        step(0)
        ckpt = resolve(name, checkpoint)
        digest = sha256_file(ckpt)
        model = load_model(name, ckpt)
        enc_path = out_dir / f"{name}_encoder{'_fp16' if fp16 else ''}.onnx"
        dec_path = out_dir / f"{name}_decoder.onnx"
        step(1)
        export_encoder(model, spec, enc_path, opset, fp16)
        step(2)
        check_onnx(enc_path)
        step(3)
        enc_diff, embedding = compare_encoder(model, enc_path, _sample_image(spec.input_size, spec), fp16)
        step(4)
        export_decoder(model, dec_path, opset)
        step(5)
        check_onnx(dec_path)
        step(6)
        dec_diff = max(
            compare_decoder(model, dec_path, embedding, realistic_prompts(b, n, spec.input_size, seed=b * 31 + n))
            for b, n in ((1, 1), (1, 5), (4, 16))
        )
        pair_diff = export_no_mask_pair(model, dec_path, embedding, opset)  # OrtBackend's no-mask fast path
        dec_diff = dec_diff if pair_diff is None else max(dec_diff, pair_diff)
        bar.update(1)
    finally:
        bar.close()
    result = ExportResult(name, enc_path, dec_path, enc_diff, dec_diff, digest, opset, fp16)
    (out_dir / f"{name}_export.json").write_text(result.to_json())
    return result
