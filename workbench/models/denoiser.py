"""DenoiserNet: a compact conditioned U-shaped denoiser with one down/up level."""

from __future__ import annotations

from typing import Optional

import torch

from workbench.models.base import ConditionedReconNet
from workbench.models.blocks import ConvNormAct, DownBlock, GatedBlock, UpBlock, maybe_cbam

Tensor = torch.Tensor


class DenoiserNet(ConditionedReconNet):
    """Lightweight J-invariant DWI denoiser with a single U-Net level (Ronneberger et al. 2015).

    Predicts diffusion volume ``j`` from the other volumes and closed-form q-space
    priors (the Noise2Self / Patch2Self idea: Batson & Royer 2019, Fadnavis et al. 2020),
    conditioned on ``j`` through a sinusoidal encoding (Vaswani et al. 2017) and FiLM
    (Perez et al. 2018). Features use factorised convolutions, gated blocks and CBAM
    attention (Woo et al. 2018)::

        stem 1x1 -> gated -> CBAM ---------------------------- skip --+
                             `-> down -> gated -> gated(dil 2) -> CBAM -> up --+-> 1x1 fuse -> gated -> head

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
        self.stem = ConvNormAct(in_channels, c, 1, e)
        self.enc = GatedBlock(c, c, e)
        self.cbam1 = maybe_cbam(c, use_cbam)
        self.down = DownBlock(c, 2 * c, e)
        self.mid1 = GatedBlock(2 * c, 2 * c, e)
        self.mid2 = GatedBlock(2 * c, 2 * c, e, dilation=2)
        self.cbam2 = maybe_cbam(2 * c, use_cbam)
        self.up = UpBlock(2 * c, c)
        self.fuse = ConvNormAct(2 * c, c, 1, e)
        self.dec = GatedBlock(c, c, e)
        self.head = self._head(c, out_channels)

    def _forward_padded(self, x: Tensor, emb: Tensor) -> Tensor:
        skip = self.cbam1(self.enc(self.stem(x, emb), emb))
        h = self.down(skip, emb)
        h = self.cbam2(self.mid2(self.mid1(h, emb), emb))
        h = self.up(h, skip.shape[-3:])
        h = self.fuse(torch.cat([skip, h], dim=1), emb)
        return self.head(self.dec(h, emb))
