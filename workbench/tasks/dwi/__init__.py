"""The `dwi` task: self-supervised (J-invariant) denoising of diffusion-weighted MRI."""
