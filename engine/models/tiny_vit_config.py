"""``TinyViTConfig``: the hyper-parameters of a SAM-style TinyViT encoder.

Its own module so that ``engine.models.tiny_vit`` (attention stages, the encoder) and
``engine.models.tiny_vit_convs`` (stem, MBConv stage, patch merging) both import it and not each other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TinyViTConfig"]


def _conv_out(size: int, kernel: int, stride: int) -> int:
    """Output side of a conv with ``padding = kernel // 2``."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


@dataclass(frozen=True, slots=True)
class TinyViTConfig:
    """Hyper-parameters of a SAM-style TinyViT (defaults: MobileSAM's TinyViT-5M at 1024 input).

    Stage 0 is convolutional (MBConv); stages 1.. use windowed attention with ``num_heads[i]`` and
    ``window_sizes[i]`` (entry 0 of both is unused). ``merge_strides[i]`` is the stride of the
    patch merging between stage ``i`` and ``i + 1`` (the SAM variants keep the last merge at
    stride 1: the reference code picks stride 1 for out dims 320/448/576, the last stage of every
    released TinyViT size). The stem is two ``stem_kernel`` convs of stride ``stem_stride``
    (3/2 for MobileSAM, 1/1 for LiteMedSAM). ``with_head`` adds the classifier ``norm_head`` /
    ``head`` (to ``head_classes``) that MobileSAM's checkpoint carries; ``forward`` never uses it.
    """

    img_size: int = 1024
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    merge_strides: tuple[int, ...] = (2, 2, 1)
    stem_kernel: int = 3
    stem_stride: int = 2
    in_chans: int = 3
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    out_chans: int = 256
    with_head: bool = False
    head_classes: int = 1000

    def __post_init__(self) -> None:
        n = len(self.embed_dims)
        lengths = {"depths": len(self.depths), "num_heads": len(self.num_heads), "window_sizes": len(self.window_sizes)}
        if n < 2 or any(v != n for v in lengths.values()) or len(self.merge_strides) != n - 1:
            raise ValueError(
                f"embed_dims has {n} stages (need >= 2); depths, num_heads and window_sizes need {n} "
                f"entries and merge_strides {n - 1}, got {lengths} and {len(self.merge_strides)}"
            )
        for i in range(1, n):
            if self.num_heads[i] <= 0 or self.embed_dims[i] % self.num_heads[i]:
                raise ValueError(
                    f"stage {i}: embed_dim {self.embed_dims[i]} must be divisible by num_heads {self.num_heads[i]}"
                )
            if self.window_sizes[i] <= 0:
                raise ValueError(f"stage {i}: window size must be positive, got {self.window_sizes[i]}")
        if self.stem_kernel % 2 == 0 or min(self.stem_stride, *self.merge_strides) <= 0:
            raise ValueError(
                f"stem_kernel must be odd and strides positive, got stem_kernel={self.stem_kernel}, "
                f"stem_stride={self.stem_stride}, merge_strides={self.merge_strides}"
            )
        if self.img_size <= 0:
            raise ValueError(f"img_size must be positive, got {self.img_size}")

    def stage_resolutions(self) -> tuple[int, ...]:
        """Side of the feature grid entering each stage (the last one is the output side)."""
        side = self.img_size
        for _ in range(2):  # the stem's two convs
            side = _conv_out(side, self.stem_kernel, self.stem_stride)
        sides = [side]
        for stride in self.merge_strides:
            sides.append(_conv_out(sides[-1], 3, stride))
        return tuple(sides)

    @property
    def output_size(self) -> int:
        """Side ``R`` of the ``(B, out_chans, R, R)`` output embedding."""
        return self.stage_resolutions()[-1]
