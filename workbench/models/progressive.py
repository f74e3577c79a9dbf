"""ProgressiveDetailNet: a coarse half-resolution estimate refined by a full-resolution detail stage."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from workbench.models.base import ConditionedReconNet
from workbench.models.blocks import ConvNormAct, DownBlock, GatedBlock, UpBlock, crop_to, maybe_cbam

Tensor = torch.Tensor


class ProgressiveDetailNet(ConditionedReconNet):
    """Coarse-to-fine reconstruction: output = coarse + details.

    A coarse stage works at half resolution with a large receptive field and predicts a
    coarse image, upsampled trilinearly; a detail stage at full resolution sees the
    stem features, the upsampled coarse features and the coarse image and predicts the
    missing high-frequency details, as in Laplacian-pyramid super-resolution (LapSRN,
    Lai et al. 2017) and progressive refinement networks. Both heads start near zero, so
    with ``residual_channel`` the fresh model returns the residual channel. FiLM
    (Perez et al. 2018) on a sinusoidal volume-index encoding (Vaswani et al. 2017)
    conditions every block; CBAM (Woo et al. 2018) sits in both stages.
    :meth:`forward_stages` exposes the coarse and detail parts (e.g. for deep supervision).

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
        # stage 1: coarse reconstruction at half resolution
        self.coarse_down = DownBlock(c, 2 * c, e)
        self.coarse1 = GatedBlock(2 * c, 2 * c, e)
        self.coarse2 = GatedBlock(2 * c, 2 * c, e, dilation=2)
        self.cbam_coarse = maybe_cbam(2 * c, use_cbam)
        self.coarse_head = self._head(2 * c, out_channels)
        self.coarse_up = UpBlock(2 * c, c)
        # stage 2: detail refinement at full resolution
        self.detail_in = ConvNormAct(2 * c + out_channels, c, 1, e)
        self.detail1 = GatedBlock(c, c, e)
        self.cbam_detail = maybe_cbam(c, use_cbam)
        self.detail2 = GatedBlock(c, c, e)
        self.detail_head = self._head(c, out_channels)

    def _stages(self, x: Tensor, emb: Tensor) -> tuple[Tensor, Tensor]:
        stem = self.stem(x, emb)
        size = stem.shape[-3:]
        h = self.coarse2(self.coarse1(self.coarse_down(stem, emb), emb), emb)
        h = self.cbam_coarse(h)
        coarse = F.interpolate(self.coarse_head(h), size=size, mode="trilinear", align_corners=False)
        d = self.detail_in(torch.cat([stem, self.coarse_up(h, size), coarse], dim=1), emb)
        details = self.detail_head(self.detail2(self.cbam_detail(self.detail1(d, emb)), emb))
        return coarse, details

    def _forward_padded(self, x: Tensor, emb: Tensor) -> Tensor:
        coarse, details = self._stages(x, emb)
        return coarse + details

    def forward_stages(self, x: Tensor, cond: Tensor) -> dict[str, Tensor]:
        """``{"coarse", "details", "output"}``, each (B, out_channels, D, H, W).

        ``output`` equals :meth:`forward`; ``coarse`` includes the residual channel when
        one is set, so ``output = coarse + details``.
        """
        self._check(x, cond)
        emb = self.cond_embedding(cond)
        xp, size = self.prepare(x)
        coarse, details = (crop_to(t, size).to(x.dtype) for t in self._stages(xp, emb))
        if self.residual_channel is not None:
            k = self.residual_channel
            coarse = coarse + x[:, k:k + self.out_channels]
        return {"coarse": coarse.contiguous(), "details": details.contiguous(),
                "output": (coarse + details).contiguous()}
