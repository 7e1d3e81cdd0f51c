"""TinyViT's ONNX layout: conv stages channels-first and MLPs as 1x1 convs, same numbers as eager.

Eager torch runs every stage channels-last (``engine.models.tiny_vit``); under ``torch.onnx.export``
the stem, MBConv stage, patch merging and the blocks' MLPs run channels-first as convolutions,
which ONNX Runtime's NCHWc kernels run faster than Gemm + bias on 2 cores. These tests pin that
the export layout computes the same function and that the exported graph keeps that layout.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from engine.export.common import torch_to_onnx
from engine.models.fast_ops import Conv2dBN
from engine.models.tiny_vit import TinyViT
from tests.refs import randomize_
from tests.test_models_caches import SMALL_TINYVIT, small_tinyvit

ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize(
    "in_ch, out_ch, kernel, stride, groups",
    [(8, 24, 1, 1, 1), (24, 24, 3, 2, 24), (3, 8, 3, 2, 1)],
    ids=["pointwise", "depthwise-stride-2", "dense-3x3-stride-2"],
)
def test_conv2dbn_forward_nchw_equals_conv_then_batchnorm(in_ch: int, out_ch: int, kernel: int, stride: int,
                                                          groups: int) -> None:
    conv = Conv2dBN(in_ch, out_ch, kernel, stride, groups)
    randomize_(conv, seed=3)
    x = torch.randn(2, in_ch, 9, 11, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        conv.train()
        assert torch.allclose(conv.forward_nchw(x), conv(x), atol=1e-6)  # training: the real BN (batch stats)
        conv.eval()
        ref = conv.bn(conv.c(x))  # running statistics, unfolded
        got = conv.forward_nchw(x)
        assert got.shape == ref.shape
        assert float((got - ref).abs().max()) < 1e-5
        assert float((ref - conv.c(x)).abs().max()) > 1e-2  # BN is not a no-op here: the fold is tested


def test_export_layout_computes_the_eager_function(monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_tinyvit(seed=5)
    x = torch.randn(2, 3, SMALL_TINYVIT.img_size, SMALL_TINYVIT.img_size, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        eager = model(x)
        monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)  # the layout torch.onnx.export sees
        exported_layout = model(x)
    assert exported_layout.shape == eager.shape == (2, 256, *model.output_size)
    assert float((exported_layout - eager).abs().max()) < 1e-4


class _Encoder(nn.Module):
    def __init__(self, model: TinyViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)


def test_exported_graph_runs_every_conv_and_mlp_as_conv_nodes(tmp_path: Path) -> None:
    model = small_tinyvit(seed=7)
    side = SMALL_TINYVIT.img_size
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(8))
    path = tmp_path / "tiny_vit.onnx"
    torch_to_onnx(_Encoder(model).eval(), (x,), path, 17, input_names=["image"], output_names=["image_embeddings"])
    nodes = onnx.load(str(path)).graph.node
    ops = Counter(node.op_type for node in nodes)
    depths = SMALL_TINYVIT.depths
    attention_blocks = sum(depths[1:])
    # every conv of the model is a Conv node: stem 2, MBConv 3 each, patch merging 3 each, per attention
    # block the local conv and the MLP's two 1x1s, the neck's 3x3 (its first 1x1 stays a MatMul)
    assert ops["Conv"] == 2 + 3 * depths[0] + 3 * (len(depths) - 1) + 3 * attention_blocks + 1
    mlp_nodes = [node for node in nodes if "/mlp/" in node.name]
    assert sum(node.op_type == "Conv" for node in mlp_nodes) == 2 * attention_blocks
    assert not [node.name for node in mlp_nodes if node.op_type in ("Gemm", "MatMul")]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(out - ref).max() < 1e-4
