"""Frozen configuration of the Wan DiT, and the presets of every public Wan 2.1 / 2.2 variant.

A variant is a config, never a subclass: T2V, I2V (CLIP-vision tokens through
``img_emb`` and extra ``k_img/v_img``), FLF2V (I2V plus ``img_emb.emb_pos`` for two images),
TI2V (48-channel Wan 2.2 latents, per-token timesteps) and the embedded tiny model all build the
same ``WanDiT``. Numbers from the official configs (Wan-Video/Wan2.1 and Wan2.2,
``wan/configs/*.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

MODEL_TYPES = ("t2v", "i2v", "flf2v", "ti2v")
VAE_BY_CHANNELS = {16: "2.1", 48: "2.2"}  # latent channels -> VAE family the model expects


@dataclass(frozen=True)
class DiTConfig:
    """Shape of a Wan DiT. Defaults are the Wan 2.1 T2V 1.3B model."""

    dim: int = 1536                 # token width
    ffn_dim: int = 8960             # hidden width of each block's feed-forward
    num_heads: int = 12             # attention heads; Wan keeps head_dim = dim / heads = 128
    num_layers: int = 30            # transformer blocks
    in_dim: int = 16                # input channels: latent (16/48), or 36 = noise + mask + image
    out_dim: int = 16               # predicted velocity channels = latent channels
    text_dim: int = 4096            # umT5-XXL hidden size
    freq_dim: int = 256             # sinusoidal timestep features
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) latent cells per token
    text_len: int = 512             # text tokens are zero-padded to this length, as Wan trains
    eps: float = 1e-6               # LayerNorm / RMSNorm epsilon inside the blocks
    model_type: str = "t2v"         # t2v | i2v | flf2v | ti2v (what the conditioning means)
    img_emb: bool = False           # CLIP-vision branch (Wan 2.1 I2V/FLF2V; not Wan 2.2 I2V A14B)
    clip_dim: int = 1280            # CLIP ViT-H/14 penultimate width
    flf_pos_len: int = 0            # FLF2V: learned positions for 2 x 257 CLIP tokens (514)
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not one of {MODEL_TYPES}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head_dim {self.head_dim} must be even and >= 6 for 3D RoPE")
        if self.flf_pos_len and not self.img_emb:
            raise ValueError("flf_pos_len (FLF2V) needs img_emb=True")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive ints, got {self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def latent_channels(self) -> int:
        """Channels of the VAE latent this model denoises (= out_dim)."""
        return self.out_dim

    @property
    def vae(self) -> str:
        """VAE family the model expects: "2.1" (16 ch), "2.2" (48 ch), or "custom"."""
        return VAE_BY_CHANNELS.get(self.out_dim, "custom")

    @property
    def cond_channels(self) -> int:
        """Extra input channels the caller concatenates after the noise (I2V: 4 mask + 16 image)."""
        return self.in_dim - self.out_dim


def param_count(c: DiTConfig) -> int:
    """Parameters of a ``WanDiT(c)``, from the shapes alone (used for the preset comments)."""
    d, p = c.dim, math.prod(c.patch_size)
    lin = lambda i, o: i * o + o  # noqa: E731
    block = 2 * (4 * lin(d, d) + 2 * d) + 2 * d + lin(d, c.ffn_dim) + lin(c.ffn_dim, d) + 6 * d
    if c.img_emb:
        block += 2 * lin(d, d) + d
    top = (lin(c.in_dim * p, d) + lin(c.text_dim, d) + lin(d, d) + lin(c.freq_dim, d) + lin(d, d)
           + lin(d, 6 * d) + lin(d, c.out_dim * p) + 2 * d)
    if c.img_emb:
        top += 2 * c.clip_dim + lin(c.clip_dim, c.clip_dim) + lin(c.clip_dim, d) + 2 * d
        top += c.flf_pos_len * c.clip_dim
    return top + c.num_layers * block


_14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)

DIT_PRESETS: dict[str, DiTConfig] = {
    "wan2.1-t2v-1.3b": DiTConfig(),                                               # 1,418,996,800
    "wan2.1-t2v-14b": DiTConfig(**_14B),                                           # 14,288,491,584
    "wan2.1-i2v-14b": DiTConfig(**_14B, in_dim=36, model_type="i2v", img_emb=True),  # 16,394,878,784
    "wan2.1-flf2v-14b": DiTConfig(**_14B, in_dim=36, model_type="flf2v", img_emb=True,
                                  flf_pos_len=514),                                # 16,395,536,704
    "wan2.2-ti2v-5b": DiTConfig(dim=3072, ffn_dim=14336, num_heads=24, in_dim=48, out_dim=48,
                                model_type="ti2v"),                                # 4,999,787,712
    # A14B = two experts of this shape (high noise above the boundary, low noise below; the
    # boundaries are in samplers.experts.WAN22_BOUNDARY).
    "wan2.2-t2v-a14b": DiTConfig(**_14B),                                          # 14,288,491,584 each
    "wan2.2-i2v-a14b": DiTConfig(**_14B, in_dim=36, model_type="i2v"),              # 14,288,901,184 each
}


def tiny_config(**overrides: object) -> DiTConfig:
    """A small config for tests and the embedded model (dim 128, 2 layers, text_dim 32)."""
    base = DiTConfig(dim=128, ffn_dim=256, num_heads=2, num_layers=2, text_dim=32, freq_dim=64,
                     text_len=16)
    return replace(base, **overrides)
