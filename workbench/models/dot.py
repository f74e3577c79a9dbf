"""Diffuse optical tomography network: per-pair tokens, sensitivity-weighted lifting, 3D UNet.

Near-infrared diffuse optical tomography (DOT; Arridge 1999, "Optical tomography in
medical imaging", Inverse Problems 15 R41) measures light between sources and detectors
on the boundary and reconstructs absorption ``mu_a`` and reduced scattering ``mu_s'``
inside. The input is a set of source-detector pairs, not a volume, so a voxel network
alone cannot read it; a fully connected layer from all measurements to all voxels
(Yoo et al. 2020, "Deep Learning Diffuse Optical Tomography", IEEE TMI 39(4)) learns the
geometry from data and breaks as soon as a pair is left out. :class:`DotNet` is told
the geometry instead:

1. every pair becomes a token: an MLP on its measurements and a Fourier encoding of its
   source and detector positions (Tancik et al. 2020, "Fourier Features Let Networks
   Learn High Frequency Functions in Low Dimensional Domains"; Mildenhall et al. 2020,
   NeRF); absent pairs give token 0;
2. the tokens are lifted to a coarse grid through the task's fixed sensitivity matrix
   ``W`` (each row where one measurement is sensitive, e.g. a normalised Rytov Jacobian):
   a sensitivity-weighted average of the present tokens per voxel, a learned
   back-projection normalised like SIRT, so any subset of pairs gives the same scale;
   coverage and voxel coordinates are appended;
3. a small 3D UNet (Cicek et al. 2016, "3D U-Net") of residual units, with spatial
   attention at its two deepest levels, decodes the lifted volume and upsamples it to
   the output grid.

``W`` is large and not learned: it is a non-persistent buffer set by :meth:`DotNet.set_geometry`
(the task does this when it builds or loads a model), so checkpoints stay a few MB.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.models.utils import autocast_on, norm3d, small_init_

Tensor = torch.Tensor

__all__ = ["DotNet", "PairEncoder", "SpatialAttentionBlock", "fourier_encode"]


def fourier_encode(positions: Tensor, n_frequencies: int) -> Tensor:
    """``positions`` (..., D) in [-1, 1] -> (..., D * (1 + 2 * n_frequencies)).

    The raw coordinates followed by ``sin(pi 2^k p)`` and ``cos(pi 2^k p)`` for
    ``k = 0 .. n_frequencies - 1`` (the positional encoding of NeRF).
    """
    freqs = math.pi * 2.0 ** torch.arange(n_frequencies, device=positions.device, dtype=positions.dtype)
    args = (positions[..., None] * freqs).flatten(-2)
    return torch.cat([positions, torch.sin(args), torch.cos(args)], dim=-1)


class PairEncoder(nn.Module):
    """Per-pair token MLP on ``[features, Fourier(source xyz, detector xyz)]``.

    The first layer, a linear map of the concatenation, is written as the sum of one
    linear map of the features and one of the position code: the same function, but
    each part gets its own fan-in initialisation, so the few measurement features are
    not drowned at initialisation by the many position channels, and the position part
    is computed once per pair rather than once per sample.

    Parameters
    ----------
    in_features : int
        Features per pair (measurements and the presence flag).
    token_dim : int
        Output token width.
    n_frequencies : int
        Octaves of the Fourier position encoding.
    hidden : int
        Width of the two hidden layers.
    """

    def __init__(self, in_features: int, token_dim: int, n_frequencies: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.n_frequencies = int(n_frequencies)
        self.features_in = nn.Linear(in_features, hidden)
        self.positions_in = nn.Linear(6 * (1 + 2 * self.n_frequencies), hidden, bias=False)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, token_dim))

    def forward(self, features: Tensor, positions: Tensor, present: Tensor) -> Tensor:
        """``features`` (B, P, F), ``positions`` (P, 6), ``present`` (B, P) bool -> (B, P, token_dim).

        Absent pairs never reach the output: their features are replaced by 0 before the
        MLP (so even NaN values do not leak) and their tokens set to 0 after it.
        """
        zero = torch.zeros((), dtype=features.dtype, device=features.device)
        features = torch.where(present[..., None], features, zero)
        pos = self.positions_in(fourier_encode(positions.to(features.dtype), self.n_frequencies))
        tokens = self.mlp(self.features_in(features) + pos)
        return torch.where(present[..., None], tokens, torch.zeros((), dtype=tokens.dtype, device=tokens.device))


class SpatialAttentionBlock(nn.Module):
    """Spatial attention gate ``x * sigmoid(conv(relu(conv(x))))`` with a (B, 1, ...) map.

    The attention gates of Attention U-Net (Oktay et al. 2018, "Attention U-Net:
    Learning Where to Look for the Pancreas") without the gating signal, i.e. the
    spatial branch of CBAM (Woo et al. 2018) computed by point-wise convolutions. The
    one-channel convolution runs in float32 under autocast (bfloat16 single-channel
    convolutions are very slow on CPUs without native bfloat16). The last map is kept
    in :attr:`last_map` (detached, float32).

    Parameters
    ----------
    channels : int
        Feature channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 8, 1)
        self.gate = nn.Sequential(nn.Conv3d(channels, hidden, 1), nn.ReLU(), nn.Conv3d(hidden, 1, 1), nn.Sigmoid())
        self.last_map: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        if autocast_on(x):
            with torch.autocast(x.device.type, enabled=False):
                a = self.gate(x.float())
        else:
            a = self.gate(x)
        self.last_map = a.detach().float()
        return x * a.to(x.dtype)


class ConvBlock(nn.Module):
    """Residual unit: two ``3^3`` convolutions with GroupNorm and SiLU, plus a linear skip.

    ``skip(x) + body(x)``, the skip a ``1^3`` convolution (identity for equal widths; He
    et al. 2016, residual learning). The skip is what carries absolute amplitudes:
    GroupNorm removes each sample's mean and scale per group, and the contrast of an
    inclusion is exactly such a scale.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, 3, padding=1), norm3d(out_channels), nn.SiLU(),
            nn.Conv3d(out_channels, out_channels, 3, padding=1), norm3d(out_channels), nn.SiLU(),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if autocast_on(x) and min(x.shape[-3:]) <= 2:
            # On CPU (torch 2.13, oneDNN) the bfloat16 weight gradient of a 3^3 convolution on a
            # 2^3 grid came out wrong by orders of magnitude inside this network (not in isolation);
            # levels this small cost nothing in float32.
            with torch.autocast(x.device.type, enabled=False):
                x = x.float()
                return self.skip(x) + self.body(x)
        return self.skip(x) + self.body(x)


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    """Stride-2 ``3^3`` convolution (ceil(s / 2) voxels: odd sizes are fine), GroupNorm, SiLU."""
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, 3, stride=2, padding=1), norm3d(out_channels), nn.SiLU())


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(int(s) for s in size), mode="trilinear", align_corners=False)


class DotNet(nn.Module):
    """Boundary NIR measurements of source-detector pairs -> 3D ``mu_a`` / ``mu_s'`` deviation maps.

    ``forward(x (B, P, F), cond=None) -> (B, out_channels, G, G, G)`` with ``G = output_grid``.
    The last of the ``F`` features of a pair is its presence flag (1 measured, 0 left
    out); the others are its measurements (CW log-amplitude, RF log-amplitude, RF phase
    as Rytov differences). ``cond`` is accepted for the generic signature and ignored.
    The output is the task's normalised relative deviation, without final activation.
    Call :meth:`set_geometry` before the first forward.

    Parameters
    ----------
    in_channels : int
        Features per pair ``F`` (measurements + presence flag).
    out_channels : int
        Output maps (2: ``mu_a`` and ``mu_s'``).
    num_conditions : int
        Accepted for the generic model contract; unused.
    base_filters : int
        Channels of the UNet at the lift grid (x2 per level).
    n_pairs : int
        Number of source-detector pairs ``P`` of the probe geometry.
    token_dim : int
        Width of the per-pair tokens and of the lifted volume (plus 4 channels).
    output_grid : int
        Edge of the cubic output grid.
    upsample : int
        Output grid / lift grid; the sensitivity matrix lives on the lift grid.
    spatial_attention : bool
        Spatial attention blocks at the two deepest encoder levels; ``False`` builds none.
    tikhonov_channels : int
        Extra lifted channels computed by a fixed linear operator of the measurements (the
        task passes linearised Tikhonov reconstructions at a few regularisation weights to
        :meth:`set_geometry`); 0 (default) uses none. The per-pair tokens cannot mix pairs
        before the lift, so without them the lift is a back-projection the UNet must
        deconvolve (learned post-processing of a regularised inverse: Jin et al. 2017,
        "Deep convolutional neural network for inverse problems in imaging").

    Attributes
    ----------
    lift_grid : int
        ``output_grid // upsample``, the grid of the sensitivity matrix.
    attention_maps : list of Tensor
        The (B, 1, ...) maps of the last forward, shallow to deep, detached float32
        (empty without attention); :meth:`attention_map` gives the deepest on the output grid.

    Notes
    -----
    Generic config fields this model has no use for (``embedding_dim``, ``use_cbam``) are
    dropped by :func:`workbench.models.build_model`; attention is switched by the option
    ``spatial_attention``.
    """

    #: relative floor of the lifting's denominator (fraction of the largest coverage)
    eps: float = 1e-6

    def __init__(self, in_channels: int = 4, out_channels: int = 2, num_conditions: int = 1, base_filters: int = 16,
                 n_pairs: int = 256, token_dim: int = 32, output_grid: int = 32, upsample: int = 2,
                 spatial_attention: bool = True, tikhonov_channels: int = 0) -> None:
        super().__init__()
        for name, value, low in (("in_channels", in_channels, 2), ("out_channels", out_channels, 1),
                                 ("num_conditions", num_conditions, 1), ("base_filters", base_filters, 2),
                                 ("n_pairs", n_pairs, 1), ("token_dim", token_dim, 1), ("upsample", upsample, 1),
                                 ("tikhonov_channels", tikhonov_channels, 0)):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if int(output_grid) != output_grid or output_grid % upsample or output_grid // upsample < 4:
            raise ValueError(f"output_grid must be a multiple of upsample={upsample} with output_grid / upsample "
                             f">= 4, got {output_grid!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.num_conditions, self.base_filters = int(num_conditions), int(base_filters)
        self.n_pairs, self.token_dim = int(n_pairs), int(token_dim)
        self.output_grid, self.upsample = int(output_grid), int(upsample)
        self.lift_grid = self.output_grid // self.upsample
        self.spatial_attention = bool(spatial_attention)
        self.tikhonov_channels = int(tikhonov_channels)

        self.encoder = PairEncoder(self.in_channels, self.token_dim)
        self.register_buffer("sensitivity", None, persistent=False)  # (P, N) on the lift grid
        self.register_buffer("pair_positions", None, persistent=False)  # (P, 6)
        self.register_buffer("inverse", None, persistent=False)  # ((F - 1) P, tikhonov_channels N) on the lift grid

        c = self.base_filters
        self.stem = ConvBlock(self.token_dim + 4 + self.tikhonov_channels, c)
        self.down1, self.enc1 = _down(c, 2 * c), ConvBlock(2 * c, 2 * c)
        self.down2, self.enc2 = _down(2 * c, 4 * c), ConvBlock(4 * c, 4 * c)
        self.att1 = SpatialAttentionBlock(2 * c) if self.spatial_attention else None
        self.att2 = SpatialAttentionBlock(4 * c) if self.spatial_attention else None
        self.dec1 = ConvBlock(4 * c + 2 * c, 2 * c)
        self.dec0 = ConvBlock(2 * c + c, c)
        self.refine = nn.Sequential(nn.Conv3d(c, c, 3, padding=1), norm3d(c), nn.SiLU())  # residual, on the output grid
        self.head = small_init_(nn.Conv3d(c, self.out_channels, 1), std=1e-2)  # starts near "homogeneous"
        self.attention_maps: list[Tensor] = []

    # ------------------------------------------------------------------ geometry
    @property
    def has_geometry(self) -> bool:
        """Whether :meth:`set_geometry` has been called."""
        return self.sensitivity is not None

    def set_geometry(self, weights: Tensor, pair_positions: Tensor, inverse: Optional[Tensor] = None) -> None:
        """Set the probe geometry: sensitivity ``weights`` (P, X, Y, Z) on the lift grid,
        ``pair_positions`` (P, 6), source xyz then detector xyz normalised to [-1, 1], and, for a
        model with ``tikhonov_channels``, the linear ``inverse`` (F - 1, P, tikhonov_channels, X, Y, Z):
        channel ``c`` of the lifted volume is ``sum_{f, p} x[b, p, f] inverse[f, p, c]``.

        All are non-persistent buffers (not in the state dict, moved by ``.to()``). The
        weights must be nonnegative and finite; rows are used as given (the task
        normalises each to sum 1).
        """
        weights, pair_positions = torch.as_tensor(weights), torch.as_tensor(pair_positions)
        g = self.lift_grid
        if weights.dim() != 4 or tuple(weights.shape[1:]) != (g, g, g):
            raise ValueError(f"sensitivity weights must have shape (P, {g}, {g}, {g}) (the lift grid of "
                             f"output_grid={self.output_grid} / upsample={self.upsample}), got {tuple(weights.shape)}")
        if weights.shape[0] != self.n_pairs:
            raise ValueError(f"the geometry has {weights.shape[0]} pairs but the model was built for "
                             f"n_pairs={self.n_pairs}")
        if tuple(pair_positions.shape) != (self.n_pairs, 6):
            raise ValueError(f"pair_positions must have shape ({self.n_pairs}, 6), got {tuple(pair_positions.shape)}")
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("sensitivity weights must be finite and nonnegative")
        if not torch.isfinite(pair_positions).all():
            raise ValueError("pair_positions must be finite")
        ref = next(self.parameters())
        dtype = torch.float64 if ref.dtype == torch.float64 else torch.float32
        if self.tikhonov_channels:
            want = (self.in_channels - 1, self.n_pairs, self.tikhonov_channels, g, g, g)
            if inverse is None or tuple(torch.as_tensor(inverse).shape) != want:
                got = None if inverse is None else tuple(torch.as_tensor(inverse).shape)
                raise ValueError(f"this model has tikhonov_channels={self.tikhonov_channels}: set_geometry needs "
                                 f"an inverse of shape {want}, got {got}")
            inverse = torch.as_tensor(inverse).detach()
            if not torch.isfinite(inverse).all():
                raise ValueError("the inverse operator must be finite")
            self.inverse = inverse.reshape(want[0] * want[1], -1).to(ref.device, dtype).contiguous()
        elif inverse is not None:
            raise ValueError("an inverse operator was given to a model built with tikhonov_channels=0")
        self.sensitivity = weights.detach().reshape(self.n_pairs, -1).to(ref.device, dtype).contiguous()
        self.pair_positions = pair_positions.detach().to(ref.device, dtype).contiguous()

    def _check_input(self, x: Tensor) -> None:
        if self.sensitivity is None or self.pair_positions is None:
            raise RuntimeError("DotNet has no geometry: call set_geometry(...) (the dot task does this when it "
                               "loads a checkpoint)")
        if x.dim() != 3 or x.shape[2] != self.in_channels:
            raise ValueError(f"DotNet expects x of shape (B, P, {self.in_channels}), got {tuple(x.shape)}")
        if x.shape[1] != self.sensitivity.shape[0]:
            raise ValueError(f"x has {x.shape[1]} source-detector pairs but the geometry has "
                             f"{self.sensitivity.shape[0]}")

    # ------------------------------------------------------------------ stages
    def tokens(self, x: Tensor) -> Tensor:
        """Per-pair tokens (B, P, token_dim); 0 for absent pairs."""
        self._check_input(x)
        return self.encoder(x, self.pair_positions, x[..., -1] > 0.5)

    def lift(self, x: Tensor) -> Tensor:
        """The lifted volume (B, token_dim + 4 + tikhonov_channels, G_l, G_l, G_l): sensitivity-weighted
        mean token, coverage (present sensitivity / its maximum), voxel-centre coordinates in [-1, 1]
        and the linear reconstructions (when the model has them).

        Computed in float32 (float64 for a double model) also under autocast: the weights are small.
        """
        tokens = self.tokens(x)
        present = x[..., -1] > 0.5
        dtype = torch.float64 if self.sensitivity.dtype == torch.float64 else torch.float32
        b, g = x.shape[0], self.lift_grid
        with torch.autocast(x.device.type, enabled=False):
            w = self.sensitivity.to(dtype)
            num = tokens.to(dtype).transpose(1, 2) @ w  # (B, C, N)
            den = present.to(dtype) @ w  # (B, N)
            peak = den.amax(dim=1, keepdim=True)
            lifted = num / (den + self.eps * peak + 1e-12)[:, None]
            coverage = den / peak.clamp_min(1e-12)
            axis = (torch.arange(g, device=x.device, dtype=dtype) + 0.5) * (2.0 / g) - 1.0
            coords = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij")).reshape(1, 3, -1).expand(b, -1, -1)
            parts = [lifted, coverage[:, None], coords]
            if self.inverse is not None:   # fixed linear reconstructions of the measurements (absent pairs are 0)
                meas = torch.where(present[..., None], x[..., :-1], 0.0).to(dtype).transpose(1, 2).reshape(b, -1)
                parts.append((meas @ self.inverse).reshape(b, self.tikhonov_channels, -1))
            vol = torch.cat(parts, dim=1)
        return vol.reshape(b, -1, g, g, g)

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """``x`` (B, P, F) -> (B, out_channels, G, G, G); ``cond`` is ignored."""
        s0 = self.stem(self.lift(x))
        s1 = self.enc1(self.down1(s0))
        maps = []
        if self.att1 is not None:
            s1 = self.att1(s1)
            maps.append(self.att1.last_map)
        h = self.enc2(self.down2(s1))
        if self.att2 is not None:
            h = self.att2(h)
            maps.append(self.att2.last_map)
        self.attention_maps = maps
        h = self.dec1(torch.cat([_resize(h, s1.shape[-3:]).to(s1.dtype), s1], dim=1))
        h = self.dec0(torch.cat([_resize(h, s0.shape[-3:]).to(s0.dtype), s0], dim=1))
        h = _resize(h, (self.output_grid,) * 3)
        h = h + self.refine(h)
        out = self.head(h)
        return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out

    @torch.no_grad()
    def attention_map(self, x: Optional[Tensor] = None) -> Optional[Tensor]:
        """The deepest attention map on the output grid, (B, 1, G, G, G) in [0, 1], or None without attention.

        With ``x`` a forward pass runs first (without gradients); otherwise the map of the
        last forward is used (RuntimeError if there was none).
        """
        if not self.spatial_attention:
            return None
        if x is not None:
            self(x)
        if not self.attention_maps:
            raise RuntimeError("no attention map yet: run a forward pass or pass x")
        m = _resize(self.attention_maps[-1].float(), (self.output_grid,) * 3)
        return m.clamp_(0.0, 1.0)
