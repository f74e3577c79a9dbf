"""Building blocks shared by the reconstruction networks.

Everything here works on 5-D tensors ``(B, C, D, H, W)``. Normalisation is
GroupNorm (training batches are 1-8 patches, far too few for BatchNorm) and the
activation is SiLU. The volume index ``j`` of the J-invariant DWI task enters
through :class:`SinusoidalEncoding` -> :class:`ConditionEmbedding` -> one
:class:`FiLM` per block.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.models.utils import (GroupNorm32, autocast_on, crop_to, group_count, norm3d,  # noqa: F401
                                    pad_to_multiple, small_init_, spatial_mean_max)

Tensor = torch.Tensor

__all__ = [
    "FactorizedConv3d", "SinusoidalEncoding", "ConditionEmbedding", "FiLM", "ConvNormAct", "GatedBlock",
    "ChannelGate3d", "SpatialGate3d", "CBAM3d", "maybe_cbam", "DownBlock", "UpBlock", "AdaptiveSkip",
    # helpers re-exported from workbench.models.utils
    "pad_to_multiple", "crop_to", "group_count", "norm3d", "GroupNorm32", "small_init_",
]


# ----------------------------------------------------------------------------- convolutions
class FactorizedConv3d(nn.Module):
    """3-D convolution factorised into ``k x 1 x 1``, ``1 x k x 1`` and ``1 x 1 x k`` convolutions.

    The asymmetric factorisation of Szegedy et al. 2016 ("Rethinking the Inception
    Architecture"), applied along all three axes as in the pseudo-3D / (2+1)D
    networks (Qiu et al. 2017; Tran et al. 2018). It covers a ``k^3`` receptive field
    with ``3k`` instead of ``k^3`` weights per channel pair.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts; the first (depth) convolution changes the channel count.
    kernel_size : int
        Odd kernel length along each axis.
    dilation : int
        Dilation along each axis (padding keeps the spatial size).
    bias : bool
        Bias on the last of the three convolutions.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1,
                 bias: bool = True) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        k, d, p = kernel_size, dilation, dilation * (kernel_size // 2)
        self.conv_d = nn.Conv3d(in_channels, out_channels, (k, 1, 1), padding=(p, 0, 0), dilation=(d, 1, 1), bias=False)
        self.conv_h = nn.Conv3d(out_channels, out_channels, (1, k, 1), padding=(0, p, 0), dilation=(1, d, 1), bias=False)
        self.conv_w = nn.Conv3d(out_channels, out_channels, (1, 1, k), padding=(0, 0, p), dilation=(1, 1, d), bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_w(self.conv_h(self.conv_d(x)))


# ----------------------------------------------------------------------------- conditioning
class SinusoidalEncoding(nn.Module):
    """Fixed sinusoidal encoding of an integer index (Vaswani et al. 2017, "Attention Is All You Need").

    ``PE(j)[i] = sin(j * w_i)`` for the first half and ``cos(j * w_i)`` for the second,
    with ``w_i = max_period ** (-i / half)``; an odd ``embedding_dim`` gets a trailing zero.

    Parameters
    ----------
    embedding_dim : int
        Output size (>= 2).
    max_period : float
        Longest wavelength of the encoding.
    """

    def __init__(self, embedding_dim: int, max_period: float = 10_000.0) -> None:
        super().__init__()
        if embedding_dim < 2:
            raise ValueError(f"embedding_dim must be >= 2, got {embedding_dim}")
        self.embedding_dim = embedding_dim
        half = embedding_dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, index: Tensor) -> Tensor:
        """``index`` (B,) -> (B, embedding_dim), computed in float32 (float64 for a double model)."""
        dtype = torch.float64 if self.freqs.dtype == torch.float64 else torch.float32
        args = index.to(dtype)[:, None] * self.freqs.to(dtype)[None, :]
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
        if emb.shape[1] < self.embedding_dim:
            emb = F.pad(emb, (0, self.embedding_dim - emb.shape[1]))
        return emb.to(self.freqs.dtype)


class ConditionEmbedding(nn.Module):
    """Sinusoidal index encoding followed by a small MLP, as the timestep embedding of
    denoising diffusion models (Ho et al. 2020); its output feeds every :class:`FiLM`.

    Parameters
    ----------
    embedding_dim : int
        Size of the sinusoidal encoding and of the output embedding.
    """

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.encoding = SinusoidalEncoding(embedding_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embedding_dim, 2 * embedding_dim), nn.SiLU(),
            nn.Linear(2 * embedding_dim, embedding_dim), nn.SiLU(),
        )

    def forward(self, index: Tensor) -> Tensor:
        return self.mlp(self.encoding(index))


class FiLM(nn.Module):
    """Feature-wise linear modulation (Perez et al. 2018): ``x * (1 + gamma(e)) + beta(e)``.

    The projection is zero-initialised, so a fresh FiLM is the identity and the
    conditioning is learned from there.

    Parameters
    ----------
    embedding_dim : int
        Size of the condition embedding ``e``.
    channels : int
        Number of feature channels modulated.
    """

    def __init__(self, embedding_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(embedding_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        gamma, beta = self.proj(emb).chunk(2, dim=1)
        shape = gamma.shape + (1,) * (x.dim() - 2)
        return torch.addcmul(beta.view(shape), x, 1 + gamma.view(shape))


class ConvNormAct(nn.Module):
    """Convolution -> GroupNorm -> optional FiLM -> SiLU, the basic conditioned unit
    (adaptive group normalisation as in Dhariwal & Nichol 2021).

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    kernel_size : int
        1 for a point-wise projection, otherwise a :class:`FactorizedConv3d` of this size.
    embedding_dim : int or None
        Condition embedding size; ``None`` disables FiLM.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 embedding_dim: Optional[int] = None) -> None:
        super().__init__()
        self.conv = (nn.Conv3d(in_channels, out_channels, 1) if kernel_size == 1
                     else FactorizedConv3d(in_channels, out_channels, kernel_size))
        self.norm = norm3d(out_channels)
        self.film = FiLM(embedding_dim, out_channels) if embedding_dim else None
        self.act = nn.SiLU()

    def activate(self, h: Tensor, emb: Optional[Tensor] = None) -> Tensor:
        """Everything after the convolution: GroupNorm, FiLM, SiLU."""
        h = self.norm(h)
        if self.film is not None:
            h = self.film(h, emb)
        return self.act(h)

    def forward(self, x: Tensor, emb: Optional[Tensor] = None) -> Tensor:
        return self.activate(self.conv(x), emb)


class GatedBlock(nn.Module):
    """Residual gated convolution block: ``skip(x) + act(FiLM(GN(conv(x)))) * sigmoid(gate(x))``.

    The multiplicative sigmoid gate follows gated convolutions (Dauphin et al. 2017,
    "Language Modeling with Gated Convolutional Networks"; Yu et al. 2019, "Free-Form
    Image Inpainting with Gated Convolution"): the network learns, per voxel and
    channel, how much of the new feature to let through. The feature branch is a
    :class:`FactorizedConv3d`; the gate is a cheap point-wise convolution.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts; the skip is a 1x1x1 projection when they differ.
    embedding_dim : int or None
        Condition embedding size for FiLM; ``None`` disables it.
    kernel_size, dilation : int
        Of the factorised feature convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: Optional[int] = None,
                 kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__()
        self.conv = FactorizedConv3d(in_channels, out_channels, kernel_size, dilation)
        self.norm = norm3d(out_channels)
        self.film = FiLM(embedding_dim, out_channels) if embedding_dim else None
        self.act = nn.SiLU()
        self.gate = nn.Conv3d(in_channels, out_channels, 1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Optional[Tensor] = None) -> Tensor:
        h = self.norm(self.conv(x))
        if self.film is not None:
            h = self.film(h, emb)
        return self.skip(x) + self.act(h) * torch.sigmoid(self.gate(x))


# ----------------------------------------------------------------------------- attention
class ChannelGate3d(nn.Module):
    """CBAM channel attention (Woo et al. 2018): shared MLP over average- and max-pooled
    descriptors, ``sigmoid(MLP(avg) + MLP(max))`` of shape (B, C, 1, 1, 1).

    Parameters
    ----------
    channels : int
        Feature channels.
    reduction : int
        Hidden-layer reduction ratio (hidden size at least 4).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(nn.Conv3d(channels, hidden, 1), nn.SiLU(), nn.Conv3d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        avg, mx = spatial_mean_max(x)
        return torch.sigmoid(self.mlp(avg) + self.mlp(mx))


class SpatialGate3d(nn.Module):
    """CBAM spatial attention (Woo et al. 2018): a convolution over the channel-wise mean and
    max maps; the forward output is the (B, 1, D, H, W) sigmoid map itself.

    The paper's ``7 x 7`` kernel becomes a factorised ``7^3`` one (:class:`FactorizedConv3d`):
    a dense ``7^3`` convolution with a single output channel is ~20x slower on CPU. This
    tiny convolution always runs in float32 (bfloat16 one-channel convolutions are ~100x
    slower on CPUs without native bfloat16, and the map is what viewers display).

    Parameters
    ----------
    kernel_size : int
        Odd kernel size of the 2 -> 1 channel convolution (7 in the paper).
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = FactorizedConv3d(2, 1, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        if autocast_on(x):
            with torch.autocast(x.device.type, enabled=False):
                return torch.sigmoid(self.conv(pooled.float()))
        return torch.sigmoid(self.conv(pooled))


class CBAM3d(nn.Module):
    """Convolutional Block Attention Module in 3-D (Woo et al. 2018): channel attention,
    then spatial attention, each applied multiplicatively.

    The spatial gate is the submodule ``spatial_gate``; its forward output is the
    (B, 1, D, H, W) attention map that :func:`workbench.models.collect_attention_maps`
    records with a forward hook.

    Parameters
    ----------
    channels : int
        Feature channels.
    reduction : int
        Channel-MLP reduction ratio.
    spatial_kernel : int
        Kernel size of the spatial gate.
    """

    def __init__(self, channels: int, reduction: int = 4, spatial_kernel: int = 7) -> None:
        super().__init__()
        self.channel_gate = ChannelGate3d(channels, reduction)
        self.spatial_gate = SpatialGate3d(spatial_kernel)

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.channel_gate(x).to(x.dtype)
        # the float32 map is cast to the features' dtype: a bfloat16 x float32 product would
        # make the rest of the network run on float32 copies under autocast
        return x * self.spatial_gate(x).to(x.dtype)


def maybe_cbam(channels: int, use_cbam: bool) -> nn.Module:
    """A :class:`CBAM3d` when ``use_cbam``, else ``nn.Identity`` (no attention module at all)."""
    return CBAM3d(channels) if use_cbam else nn.Identity()


# ----------------------------------------------------------------------------- resolution changes
class DownBlock(nn.Module):
    """Halve the resolution with a learned ``2^3`` stride-2 convolution (the all-convolutional
    downsampling of Springenberg et al. 2015), then GroupNorm, optional FiLM, SiLU.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    embedding_dim : int or None
        Condition embedding size for FiLM; ``None`` disables it.
    """

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: Optional[int] = None) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 2, stride=2)
        self.norm = norm3d(out_channels)
        self.film = FiLM(embedding_dim, out_channels) if embedding_dim else None
        self.act = nn.SiLU()

    def forward(self, x: Tensor, emb: Optional[Tensor] = None) -> Tensor:
        h = self.norm(self.conv(x))
        if self.film is not None:
            h = self.film(h, emb)
        return self.act(h)


class UpBlock(nn.Module):
    """Double the resolution by trilinear interpolation followed by a convolution, instead
    of a transposed convolution, which avoids checkerboard artefacts (Odena et al. 2016,
    "Deconvolution and Checkerboard Artifacts").

    The 1x1x1 channel reduction runs before the interpolation (the two linear maps
    commute, so this is the same function for 1/8 of the cost); a factorised 3^3
    convolution then refines the upsampled features.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    embedding_dim : int or None
        Condition embedding size for FiLM; ``None`` disables it.
    """

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: Optional[int] = None) -> None:
        super().__init__()
        self.reduce = nn.Conv3d(in_channels, out_channels, 1)
        self.refine = ConvNormAct(out_channels, out_channels, 3, embedding_dim)

    def forward(self, x: Tensor, size: Optional[Sequence[int]] = None, emb: Optional[Tensor] = None) -> Tensor:
        h = self.reduce(x)
        if size is None:
            size = [2 * s for s in h.shape[-3:]]
        h = F.interpolate(h, size=tuple(size), mode="trilinear", align_corners=False)
        return self.refine(h, emb)


class AdaptiveSkip(nn.Module):
    """Skip connection weighted by a learned sigmoid attention map before fusion.

    The attention map is computed from both the decoder features and the skip, as the
    additive attention gates of Attention U-Net (Oktay et al. 2018); the weighted skip
    is concatenated with the decoder features and fused by a 1x1x1 convolution, whose
    input therefore has ``channels + skip_channels`` channels.

    Parameters
    ----------
    channels : int
        Channels of the decoder features ``x``.
    skip_channels : int
        Channels of the skip features.
    out_channels : int
        Channels after fusion.
    reduction : int
        Reduction ratio of the attention MLP (hidden size at least 4).
    """

    def __init__(self, channels: int, skip_channels: int, out_channels: int, reduction: int = 4) -> None:
        super().__init__()
        total = channels + skip_channels
        hidden = max(total // reduction, 4)
        self.attention = nn.Sequential(nn.Conv3d(total, hidden, 1), nn.SiLU(), nn.Conv3d(hidden, 1, 1), nn.Sigmoid())
        self.fuse = nn.Conv3d(total, out_channels, 1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        weight = self.attention(torch.cat([x, skip], dim=1))
        return self.fuse(torch.cat([x, skip * weight], dim=1))
