"""Configuration of the Wan video VAE: one frozen dataclass, two presets (2.1 and 2.2).

Sources: Wan-Video/Wan2.1 ``wan/modules/vae.py`` (``_video_vae``: dim 96, z 16),
Wan-Video/Wan2.2 ``wan/modules/vae2_2.py`` (``_video_vae``: dim 160, dec_dim 256, z 48) and
the latent statistics of their ``WanVAE`` wrappers (also in diffusers' configs and ComfyUI's
``latent_formats.Wan21`` / ``Wan22``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Per-channel statistics of the raw latents over the training data: the DiT works on
# (z - mean) / std. Fixed numbers published with the weights.
WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
WAN22_LATENT_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_LATENT_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)


@dataclass(frozen=True)
class VAEConfig:
    """Shape of a Wan video VAE. Both official VAEs, and any tiny one, are this one class.

    ``version`` picks the architecture family, not a subclass: "2.1" uses plain residual
    levels and halves channels in each spatial upsample; "2.2" wraps each level in a
    residual block with a parameter-free space-to-channel shortcut and folds 2x2 pixels
    into channels before the encoder (so its spatial stride is twice 2.1's).
    """

    version: str = "2.1"
    # Base channel width of the encoder; level i has dim * dim_mult[i] channels.
    dim: int = 96
    # Base width of the decoder; None = same as the encoder (2.1). 2.2 uses a wider decoder.
    dec_dim: int | None = None
    # Latent channels (the DiT's in/out channels): 16 for 2.1, 48 for 2.2.
    z_dim: int = 16
    # Channel multipliers per level; len(dim_mult) - 1 spatial 2x down/upsamples.
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    # Residual blocks per encoder level (the decoder uses one more, as upstream).
    num_res_blocks: int = 2
    # Which downsamples also halve time; (False, True, True) gives the 4x temporal stride
    # and the 4k+1 frame rule. The decoder mirrors it.
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    # Only used while training (the released models were trained without it at 0.0).
    dropout: float = 0.0
    # Published per-channel latent statistics; None = zeros / ones (an untrained model).
    latents_mean: tuple[float, ...] | None = field(default=None, repr=False)
    latents_std: tuple[float, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dim_mult", tuple(int(m) for m in self.dim_mult))
        object.__setattr__(self, "temperal_downsample", tuple(bool(t) for t in self.temperal_downsample))
        if self.version not in ("2.1", "2.2"):
            raise ValueError(f"VAEConfig.version must be '2.1' or '2.2', got {self.version!r}")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"temperal_downsample needs one flag per downsample: "
                             f"{len(self.dim_mult) - 1} for dim_mult={self.dim_mult}, "
                             f"got {self.temperal_downsample}")
        if self.num_res_blocks < 1 or self.dim < 1 or self.z_dim < 1:
            raise ValueError("dim, z_dim and num_res_blocks must be positive")
        for name in ("latents_mean", "latents_std"):
            stats = getattr(self, name)
            if stats is not None:
                object.__setattr__(self, name, tuple(float(v) for v in stats))
                if len(stats) != self.z_dim:
                    raise ValueError(f"{name} has {len(stats)} values; z_dim is {self.z_dim}")

    @property
    def decoder_dim(self) -> int:
        return self.dec_dim or self.dim

    @property
    def patch_size(self) -> int:
        """Pixels folded into channels per side before the encoder (2.2 only)."""
        return 2 if self.version == "2.2" else 1

    @property
    def stride(self) -> tuple[int, int, int]:
        """(time, height, width) compression: (4, 8, 8) for 2.1, (4, 16, 16) for 2.2."""
        s = 2 ** (len(self.dim_mult) - 1) * self.patch_size
        return 2 ** sum(self.temperal_downsample), s, s


VAE_PRESETS: dict[str, VAEConfig] = {
    # ~127M parameters (encoder 54M + decoder 73M); the VAE of every Wan 2.1 model and of
    # the Wan 2.2 A14B models.
    "wan2.1": VAEConfig(version="2.1", dim=96, z_dim=16, latents_mean=WAN21_LATENT_MEAN,
                        latents_std=WAN21_LATENT_STD),
    # ~705M parameters (encoder 150M + the 256-wide decoder 555M); the VAE of Wan 2.2 TI2V 5B.
    "wan2.2": VAEConfig(version="2.2", dim=160, dec_dim=256, z_dim=48, latents_mean=WAN22_LATENT_MEAN,
                        latents_std=WAN22_LATENT_STD),
}
