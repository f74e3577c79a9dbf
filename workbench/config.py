"""Typed configuration for every run: data, model, loss and training.

One pydantic model per concern, all with ``extra="forbid"`` so a typo in a YAML
file is an error rather than a silently ignored key. The whole :class:`Config`
is stored in every checkpoint and written as ``config.yaml`` beside each run.
Model classes never import this module: :func:`workbench.models.build_model`
translates a :class:`ModelConfig` into keyword arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """How training samples are drawn. ``patch_size``, ``batch_size``, ``augment`` and
    ``nan_to_zero`` are used by every task; the q-space and mask fields by the DWI task."""

    patch_size: int = Field(32, ge=8, le=256, description="edge of the cubic training patch (voxels)")
    batch_size: int = Field(4, ge=1, le=256)
    qspace_prior: Literal["mppca", "sh", "regression", "both", "none"] = Field(
        "mppca",
        description="leave-one-out predictions of each volume from the others, given to the network as "
        "extra input channels: 'mppca' = MP-PCA on one half of the volumes regressed onto the other "
        "half, plus the two closed-form ones; 'sh' = spherical harmonics per shell; 'regression' = "
        "voxelwise linear regression on the other volumes; 'both' = sh and regression; or none",
    )
    sh_order: int = Field(4, ge=2, le=8, description="even SH order for the 'sh' prior")
    prior_folds: int = Field(
        3, ge=2, le=8,
        description="interleaved folds of the 'mppca' prior: each fold is predicted from MP-PCA of the "
        "others (more folds: more volumes per MP-PCA, one MP-PCA run per fold)",
    )
    prior_ridge: float = Field(
        1e-4, ge=0.0, le=1.0,
        description="ridge of the 'mppca' prior's regression from each fold's MP-PCA output onto the fold's "
        "volumes, relative to the mean feature energy; 1e-3 (the default until stop 43) shrank the prior's "
        "angular contrast, so FA came out low (README, 'The split prior's ridge')",
    )
    mppca_stride: int = Field(
        1, ge=1, le=5,
        description="patch-centre spacing of the 'mppca' prior's MP-PCA (workbench.mppca): 1 = every voxel, "
        "DIPY's estimator; 2 = every second voxel per axis, ~8x less work",
    )
    mppca_lattice: Literal[1, 2, 4] = Field(
        1,
        description="patch centres of the 'mppca' prior's MP-PCA inside the brain (with mppca_stride 1): "
        "1 = every voxel (DIPY's estimator), 2 = every second (checkerboard), 4 = every fourth (body-centred "
        "cubic lattice): 4 is ~3x faster but cost the network 0.5 dB on the benchmark (README)",
    )
    volume_input: Literal["auto", "noisy", "denoised"] = Field(
        "auto",
        description="what the network reads of the other volumes: 'noisy', or 'denoised' (needs the 'mppca' "
        "prior): for target j in prior fold k, the volumes outside k as the split prior's MP-PCA denoises them "
        "without k, those in k their split prior, 0 beyond the brain; still J-invariant. Keeps each fold's "
        "MP-PCA output in float16 ((folds - 1) x the series: the series' float32 memory with 3 folds). 'auto': denoised with "
        "the 'mppca' prior, else noisy (checkpoints saved before this option read noisy volumes)",
    )
    augment: bool = Field(
        False,
        description="random flips and intensity scaling of patches (off by default for DWI: a flip "
        "mirrors fibre orientations relative to the fixed gradient table)",
    )
    mask: Literal["auto", "none"] = Field("auto", description="brain mask via DIPY median_otsu when none is given")
    nan_to_zero: bool = Field(False, description="replace NaN/Inf voxels with 0 instead of refusing the input")

    @field_validator("sh_order")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"sh_order must be even, got {v}")
        return v

    @property
    def denoised_volume_input(self) -> bool:
        """Whether the DWI network reads the other volumes denoised (``volume_input``, 'auto' resolved)."""
        return self.volume_input == "denoised" or (self.volume_input == "auto" and self.qspace_prior == "mppca")

    @model_validator(mode="after")
    def _denoised_needs_mppca(self) -> "DataConfig":
        if self.volume_input == "denoised" and self.qspace_prior != "mppca":
            raise ValueError(f"volume_input 'denoised' reads the 'mppca' prior's MP-PCA, but qspace_prior is "
                             f"'{self.qspace_prior}': set qspace_prior to 'mppca' or volume_input to 'noisy'")
        return self


class ModelConfig(_Strict):
    """Which network to build, and its size."""

    name: str = Field("multiscale", description="key in workbench.models.MODELS")
    base_filters: int = Field(24, ge=4, le=256)
    embedding_dim: int = Field(32, ge=4, le=512, description="sinusoidal volume-index encoding size")
    use_cbam: bool = True
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="further constructor arguments of this model (e.g. n_blocks, growth for rrdb_sr)",
    )

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from workbench.models import MODELS

        if v not in MODELS:
            raise ValueError(f"unknown model '{v}'; known models: {', '.join(sorted(MODELS))}")
        return v


class LossConfig(_Strict):
    """Weights of the composite loss; every key must be in workbench.losses.LOSSES."""

    weights: dict[str, float] = Field(default_factory=lambda: {"mse": 1.0, "edge": 0.05})
    charbonnier_eps: float = Field(1e-3, gt=0)

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("loss.weights is empty: give at least one term, e.g. {mse: 1.0}")
        from workbench.losses import LOSSES

        unknown = sorted(set(v) - set(LOSSES))
        if unknown:
            raise ValueError(f"unknown loss term(s) {unknown}; known terms: {', '.join(sorted(LOSSES))}")
        bad = {k: w for k, w in v.items() if w < 0}
        if bad:
            raise ValueError(f"loss weights must be >= 0, got {bad}")
        return v


class TrainConfig(_Strict):
    """The optimisation loop."""

    steps: Optional[int] = Field(
        None, ge=1, le=10_000_000,
        description="optimizer steps; unset: the task's default (`workbench tasks`: 2000 for dwi, 400 for the others)",
    )
    lr: Optional[float] = Field(
        None, gt=0, le=1.0,
        description="peak learning rate (onecycle's max_lr; the constant or starting rate of the other schedules); "
        "unset: the task's default (`workbench tasks`: 2e-3 for dwi, 1e-3 for the others, whose default "
        "configs may set their own)",
    )
    optimizer: Literal["adam", "adamw"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam/AdamW momentum coefficients (beta1, beta2)")
    warmup_fraction: float = Field(0.3, gt=0.0, lt=1.0, description="onecycle: fraction of the steps spent "
                                   "raising the lr to its peak (OneCycleLR pct_start)")
    schedule: Literal["onecycle", "cosine", "plateau", "none"] = "onecycle"
    grad_clip: Optional[float] = Field(1.0, gt=0, description="max gradient norm; null disables clipping")
    accumulation_steps: int = Field(1, ge=1, le=1024)
    amp: Union[bool, Literal["auto"]] = Field(
        "auto", description="mixed precision; auto: on for CUDA and for CPUs with native bfloat16 "
        "(AVX512-BF16/AMX), off where bfloat16 would only be emulated (slower than float32)"
    )
    amp_dtype: Literal["auto", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on CPU and on CUDA where supported, else float16 + GradScaler"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    val_every: int = Field(100, ge=1)
    val_batches: int = Field(4, ge=1)
    early_stopping_patience: Optional[int] = Field(None, ge=1, description="validations without improvement")
    checkpoint_every: int = Field(200, ge=1)
    ema_decay: float = Field(
        0.0, ge=0.0, lt=1.0, description="exponential moving average of the weights (0: off); validation, best.pt "
        "and prediction then use the averaged weights, kept in every checkpoint (diffusion models: 0.999)")
    compile: bool = False
    seed: int = 0
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads; null keeps torch's default")


class InferenceConfig(_Strict):
    """Whole-volume prediction and the optional post-processing that uses the noisy target itself."""

    tile: int = Field(
        96, ge=8, le=512,
        description="largest tile edge (voxels) of tiled whole-volume prediction; tiles are evened out to the "
        "fewest that cover each axis, then to tile_voxels",
    )
    overlap: int = Field(16, ge=0, le=256, description="overlap between tiles, blended linearly")
    tile_voxels: Optional[int] = Field(
        131_072, ge=512,
        description="largest tile (voxels; default 64 x 64 x 32) of tiled whole-volume prediction: a tile's working "
        "memory grows with it, so axes take more, shorter tiles until every tile fits, the layout with the least "
        "work (128 x 128 x 80: 3 x 4 x 2 tiles of 54 x 44 x 48; against 2 x 2 x 2 of 72 x 72 x 48 at 262,144 "
        "voxels, 0.17 GB less peak and no slower on 2 cores, README 'DWI at clinical size'); null: tile edges only",
    )
    mppca_blend: bool = Field(
        True,
        description="per volume, blend the J-invariant prediction with full-data MP-PCA, weights chosen by "
        "Stein's unbiased risk estimate (no clean data needed); MP-PCA also fills the air outside the mask; "
        "needs a noise sigma; with shrinkage on, the noisy volume joins the blend as a third term",
    )
    mppca_stride: int = Field(
        2, ge=1, le=5,
        description="patch-centre spacing of the blend's MP-PCA outside the brain (workbench.mppca); the brain, "
        "dilated by the patch radius, has the patches of mppca_lattice; 1 = everywhere",
    )
    mppca_lattice: Literal[1, 2, 4] = Field(
        4,
        description="patch centres of the blend's MP-PCA inside the brain dilated by the patch radius: 1 = every "
        "voxel (DIPY's estimator), 2 = every second (checkerboard), 4 = every fourth (body-centred cubic "
        "lattice): ~4x less work for ~0.01 dB (README)",
    )
    divergence_voxels: int = Field(
        100_000, ge=0,
        description="the blend's Monte-Carlo divergence reruns MP-PCA on perturbed data in three axial slabs "
        "spread over the brain holding at least this many brain voxels (0 or more than the brain: the whole "
        "volume); the slabs miss the brain's top and bottom, which costs a few % of the divergence (README)",
    )
    shrinkage: bool = Field(
        True,
        description="per volume, move the J-invariant prediction toward the noisy volume by "
        "k = 1 - sigma^2 / held-out MSE (the Wiener weight); needs a noise sigma; with mppca_blend on, "
        "the noisy volume is a third term of the SURE-weighted blend instead",
    )
    rician_correction: bool = Field(True, description="invert the Rician mean with the noise sigma")
    free_water_floor: bool = Field(
        True,
        description="clamp diffusion-weighted signal from below at S0 exp(-b 3e-3 mm^2/s), the free-water "
        "decay: keeps tensor fits (MD, FA) finite where Rician inversion leaves ~0 in CSF",
    )
    sigma: Optional[float] = Field(
        None, gt=0, description="noise sigma in input units; null estimates it from air voxels"
    )


class Config(_Strict):
    """Everything a run needs, stored verbatim in its checkpoints."""

    task: str = Field("dwi", description="key in workbench.tasks.TASKS (`workbench tasks` lists them)")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    options: dict[str, Any] = Field(default_factory=dict, description="the task's own settings")

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from workbench.tasks import canonical_task_name

        return canonical_task_name(v)  # "dwi_denoise" (before the task layer) reads as "dwi"

    @model_validator(mode="after")
    def _task_options(self) -> "Config":
        from workbench.tasks import get_task

        task = get_task(self.task)
        checked = task.options_model.model_validate(self.options).model_dump(mode="json")
        if checked != self.options:
            object.__setattr__(self, "options", checked)
        if self.train.steps is None:  # the task's default length, written out (checkpoints store the number)
            object.__setattr__(self.train, "steps", int(task.default_steps))
        if self.train.lr is None:  # likewise the task's learning rate
            object.__setattr__(self.train, "lr", float(task.default_lr))
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "Config":
        raw = yaml.safe_load(text) or {}
        if not isinstance(raw, dict):
            raise ValueError("a config file must hold a mapping (data:, model:, loss:, train:)")
        return cls.model_validate(raw)


def load_config(path: str | os.PathLike) -> Config:
    """Read a YAML config; a missing key keeps its default, an unknown key is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    return Config.from_yaml(path.read_text())


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write ``config`` as YAML atomically (temporary file, then rename)."""
    from workbench.io_utils import atomic_write_text

    atomic_write_text(Path(path), config.to_yaml())
