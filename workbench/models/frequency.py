"""FrequencyDomainNet: separate low- and high-frequency paths from a one-level Laplacian pyramid."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from workbench.models.base import ConditionedReconNet
from workbench.models.blocks import AdaptiveSkip, ConvNormAct, GatedBlock, UpBlock, maybe_cbam, pad_to_multiple

Tensor = torch.Tensor


class FrequencyDomainNet(ConditionedReconNet):
    """Band-split network on a one-level Laplacian pyramid (Burt & Adelson 1983).

    The input is split into a low-pass band ``low = avgpool_2(x)`` (blurred and
    downsampled) and a high-pass band ``high = x - upsample(low)``, so that
    ``x = upsample(low) + high`` exactly. A low-frequency path with a large receptive
    field processes ``low`` at half resolution (global structure, contrast); a shallow
    high-frequency path processes ``high`` at full resolution (edges, fine texture).
    The paths are fused through an attention-weighted skip (Oktay et al. 2018), a gated
    block and CBAM (Woo et al. 2018). The same idea underlies octave convolutions
    (Chen et al. 2019) and frequency-separated denoisers. FiLM (Perez et al. 2018) on a
    sinusoidal volume-index encoding (Vaswani et al. 2017) conditions every block.

    Parameters
    ----------
    in_channels, out_channels, num_conditions, base_filters, embedding_dim, use_cbam, residual_channel
        See :class:`~workbench.models.base.ConditionedReconNet`.
    """

    size_multiple = 2

    def __init__(self, in_channels: int, out_channels: int = 1, num_conditions: int = 1, base_filters: int = 24,
                 embedding_dim: int = 32, use_cbam: bool = True, residual_channel: Optional[int] = None) -> None:
        super().__init__(in_channels, out_channels, num_conditions, base_filters, embedding_dim, use_cbam,
                         residual_channel)
        c, e = self.base_filters, self.embedding_dim
        # low-frequency path (half resolution)
        self.low_stem = ConvNormAct(in_channels, 2 * c, 1, e)
        self.low1 = GatedBlock(2 * c, 2 * c, e)
        self.low2 = GatedBlock(2 * c, 2 * c, e, dilation=2)
        self.cbam_low = maybe_cbam(2 * c, use_cbam)
        self.low_up = UpBlock(2 * c, c)
        # high-frequency path (full resolution, small receptive field)
        self.high_stem = ConvNormAct(in_channels, c, 1, e)
        self.high1 = GatedBlock(c, c, e)
        # fusion
        self.fusion = AdaptiveSkip(c, c, c)
        self.fusion_block = GatedBlock(c, c, e)
        self.cbam_fusion = maybe_cbam(c, use_cbam)
        self.head = self._head(c, out_channels)

    @staticmethod
    def split_bands(x: Tensor) -> tuple[Tensor, Tensor]:
        """``(low, high)``: ``low`` at half resolution, ``high = x - upsample(low)`` at full resolution."""
        low = F.avg_pool3d(x, 2)
        high = x - F.interpolate(low, size=x.shape[-3:], mode="trilinear", align_corners=False)
        return low, high

    def _high_stem(self, x: Tensor, low: Tensor, emb: Tensor) -> Tensor:
        """``high_stem(x - upsample(low))`` without upsampling all input channels.

        The point-wise stem convolution ``W`` commutes with trilinear upsampling (whose
        weights sum to one), so ``W (x - up(low)) + b = (W x + b) - up(W low)``: only the
        ``base_filters`` projected channels are upsampled, not the ~100 input channels.
        """
        conv = self.high_stem.conv
        low_proj = F.conv3d(low, conv.weight)
        h = conv(x) - F.interpolate(low_proj, size=x.shape[-3:], mode="trilinear", align_corners=False)
        return self.high_stem.activate(h, emb)

    def prepare(self, x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        # keep the default layout: the low band is pooled first (avg_pool3d is ~4x slower
        # on channels-last-3d input), then both bands switch layout in _forward_padded
        return pad_to_multiple(x, self.size_multiple)

    def _forward_padded(self, x: Tensor, emb: Tensor) -> Tensor:
        low = F.avg_pool3d(x, 2).contiguous(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        lo = self.low2(self.low1(self.low_stem(low, emb), emb), emb)
        lo = self.low_up(self.cbam_low(lo), x.shape[-3:])
        hi = self.high1(self._high_stem(x, low, emb), emb)
        fused = self.fusion(lo, hi)
        return self.head(self.cbam_fusion(self.fusion_block(fused, emb)))
