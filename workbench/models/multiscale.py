"""MultiScaleDetailNet: parallel full- and half-resolution paths fused with an adaptive skip."""

from __future__ import annotations

from typing import Optional

import torch

from workbench.models.base import ConditionedReconNet
from workbench.models.blocks import AdaptiveSkip, ConvNormAct, DownBlock, GatedBlock, UpBlock, maybe_cbam

Tensor = torch.Tensor


class MultiScaleDetailNet(ConditionedReconNet):
    """Two-path network that keeps a full-resolution detail path beside a half-resolution
    context path, in the spirit of multi-resolution parallel streams (HRNet, Wang et al.
    2020) rather than a deep encoder-decoder whose bottleneck blurs fine structure.

    The half-resolution context is brought back by trilinear upsampling and fused with the
    full-resolution details through an :class:`~workbench.models.blocks.AdaptiveSkip`
    (attention-weighted skip, Oktay et al. 2018); a long skip from the stem and a gated
    detail-fusion block with CBAM (Woo et al. 2018) follow. Every block is FiLM-conditioned
    (Perez et al. 2018) on the sinusoidal volume-index encoding (Vaswani et al. 2017)::

        stem -+-> full path: gated x2 (C/2) ----------------- skip --+
              +-> down -> gated -> gated(dil 2) -> CBAM -> up (C) ---+-> adaptive skip (+ stem)
                                                         -> detail fusion gated -> CBAM -> head

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
        f = max(c // 2, 4)
        self.stem = ConvNormAct(in_channels, c, 1, e)
        # full-resolution detail path (no downsampling)
        self.full1 = GatedBlock(c, f, e)
        self.full2 = GatedBlock(f, f, e)
        # half-resolution context path
        self.down = DownBlock(c, 2 * c, e)
        self.half1 = GatedBlock(2 * c, 2 * c, e)
        self.half2 = GatedBlock(2 * c, 2 * c, e, dilation=2)
        self.cbam_half = maybe_cbam(2 * c, use_cbam)
        self.up = UpBlock(2 * c, c)
        # fusion
        self.skip = AdaptiveSkip(c, f, c)
        self.detail_fusion = GatedBlock(c, c, e)
        self.cbam_full = maybe_cbam(c, use_cbam)
        self.head = self._head(c, out_channels)

    def _forward_padded(self, x: Tensor, emb: Tensor) -> Tensor:
        stem = self.stem(x, emb)
        full = self.full2(self.full1(stem, emb), emb)
        half = self.half2(self.half1(self.down(stem, emb), emb), emb)
        half = self.up(self.cbam_half(half), stem.shape[-3:])
        fused = self.skip(half, full) + stem
        return self.head(self.cbam_full(self.detail_fusion(fused, emb)))
