"""Our WanDiT as a real ComfyUI MODEL.

A ``comfy.model_patcher.ModelPatcher`` around a ``comfy.model_base.WAN21`` / ``WAN22`` whose
``diffusion_model`` is our ``WanDiT`` (re-typed to take ComfyUI's call), so ComfyUI's model management
loads it to the GPU when a sampler needs it and offloads it when another model needs the
memory; native KSampler / SamplerCustomAdvanced / LoRA loaders work on it; the sampling is flow matching
(``ModelSamplingDiscreteFlow``: CONST prediction, Wan's shift) and the latent format is Wan's
(``latent_formats.Wan21`` / ``Wan22``: per-channel mean/std applied inside the model).

References: ComfyUI ``comfy/model_base.py`` (WAN21, WAN22), ``comfy/supported_models.py``
(WAN21_T2V, WAN22_T2V) and ``comfy/sd.py`` (``load_diffusion_model_state_dict``).

Linear layers are re-typed to a subclass that understands ComfyUI's weight casting
(``comfy_cast_weights``, ``weight_function``): partial (low-VRAM) loading and LoRA-style
weight patches work, and every layer checks for an interrupt (``comfy.ops.run_every_op``).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import comfy.float
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import comfy.supported_models
import torch
import torch.nn.functional as F

from ..model import canvas
from ..model.dit import WanDiT
from ..model.dit.attention import AttentionFn
from ..model.dit.model import WanBlock
from ..model.weights import Linear

log = logging.getLogger("spacetime.nodes")
TEXT_MEMO = "spacetime_text_memo"   # transformer_options entry: a TextMemo kept for the run


class CastLinear(Linear, comfy.ops.CastWeightBiasOp):
    """Our Linear (narrow or fp8-scaled storage) plus ComfyUI's on-the-fly weight casting: when
    ComfyUI loads the model partially (``comfy_cast_weights``) or patches a weight in low-VRAM
    mode (``weight_function``), the weight is moved and patched per use, also where the DiT
    reads it directly (``weight_as``, e.g. its fused QKV projection)."""

    def _casting(self) -> bool:
        return bool(self.comfy_cast_weights or self.weight_function or self.bias_function)

    def _cast(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        comfy.ops.run_every_op()
        w, b = comfy.ops.cast_bias_weight(self, dtype=dtype, device=mm.get_torch_device(), bias_dtype=dtype)
        if self.scale_weight is not None and self.weight.dtype != dtype:
            w = w * self.scale_weight.to(w)
        return w, b

    def weight_as(self, dtype: torch.dtype) -> torch.Tensor:
        return self._cast(dtype)[0] if self._casting() else Linear.weight_as(self, dtype)

    def bias_as(self, dtype: torch.dtype) -> torch.Tensor | None:
        return self._cast(dtype)[1] if self._casting() else Linear.bias_as(self, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        comfy.ops.run_every_op()
        if not self._casting():
            return Linear.forward(self, x)
        w, b = self._cast(x.dtype)
        return F.linear(x, w.to(x.device), None if b is None else b.to(x.device))


class ScaledCastLinear(CastLinear):
    """A CastLinear over scaled fp8 storage (the real weight is ``weight · scale_weight``). ComfyUI's
    ModelPatcher patches such a weight through ``convert_weight`` (stored -> real) and
    ``set_weight`` (real -> stored), as with its own scaled-fp8 layers; without them a LoRA would
    be added to the unscaled fp8 numbers and shrink by the scale, a near no-op."""

    def convert_weight(self, weight: torch.Tensor, inplace: bool = False, **_: object) -> torch.Tensor:
        scale = self.scale_weight.to(device=weight.device, dtype=torch.float32 if not inplace else weight.dtype)
        return weight.mul_(scale) if inplace else weight.to(torch.float32) * scale

    def set_weight(self, weight: torch.Tensor, inplace_update: bool = False, seed: int | None = None,
                   return_weight: bool = False, **_: object) -> torch.Tensor | None:
        stored = comfy.float.stochastic_rounding(weight / self.scale_weight.to(weight), self.weight.dtype, seed=seed)
        if return_weight:
            return stored
        if inplace_update:
            self.weight.data.copy_(stored)
        else:
            self.weight = torch.nn.Parameter(stored, requires_grad=False)
        return None


def make_castable(dit: WanDiT) -> None:
    for m in dit.modules():
        if type(m) is Linear:
            m.__class__ = CastLinear if m.scale_weight is None else ScaledCastLinear


class ComfyWanDiT(WanDiT):
    """Our WanDiT with ComfyUI's diffusion-model call, ``diffusion_model(x, t, context=,
    clip_fea=, time_dim_concat=, transformer_options=, **conds)``; returns the velocity. An
    instance is re-typed, not wrapped, so its parameters keep the official Wan names under
    ``diffusion_model.`` exactly as ComfyUI's own WanModel: native LoRA loaders find them.

    It honours ``transformer_options`` where ComfyUI's WanModel does: the ``DIFFUSION_MODEL``
    wrappers (native EasyCache and other step caches wrap the call), block replacements
    (``patches_replace["dit"][("double_block", i)]``) and ``optimized_attention_override``;
    and ``TEXT_MEMO``, the text keys/values a Step Cache run keeps.
    """

    _options: dict | None = None   # transformer_options of the call in progress

    @property
    def dtype(self) -> torch.dtype:  # BaseModel casts inputs to this
        return self.compute_dtype

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor | None = None,
                clip_fea: torch.Tensor | None = None, time_dim_concat: torch.Tensor | None = None,
                transformer_options: dict | None = None, **kwargs: object) -> torch.Tensor:
        options = {} if transformer_options is None else transformer_options
        wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                            options)
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(self._forward, self, wrappers).execute(
            x, timestep, context, clip_fea, time_dim_concat, options, **kwargs)

    def _forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor | None,
                 clip_fea: torch.Tensor | None = None, time_dim_concat: torch.Tensor | None = None,
                 transformer_options: dict | None = None, **_: object) -> torch.Tensor:
        frames = x.shape[2]
        if time_dim_concat is not None:  # extra frames the model sees after the latent (cropped off again)
            x = torch.cat([x, time_dim_concat.to(x)], dim=2)
        self._options = transformer_options or {}
        memo = self._options.get(TEXT_MEMO)          # a run's text keys/values (Step Cache node)
        if memo is not None:
            self.use_text_memo(memo)
        try:
            return WanDiT.forward(self, x, timestep, context, clip_fea=clip_fea)[:, :, :frames]
        finally:
            self._options = None
            if memo is not None:
                self.use_text_memo(None)

    def attention_fn(self, device: torch.device) -> AttentionFn:
        attn = WanDiT.attention_fn(self, device)
        options = self._options or {}
        if "optimized_attention_override" not in options:
            return attn
        import comfy.ldm.modules.attention as comfy_attention

        def through_comfy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            # ComfyUI's attention call (which hands it to the override): q, k, v (B, H, L, d) with
            # skip_reshape, scaled inside; ours arrives pre-scaled
            return comfy_attention.optimized_attention(q * q.shape[-1] ** 0.5, k, v, heads=q.shape[1],
                                                       skip_reshape=True, transformer_options=options)
        return through_comfy

    def run_blocks(self, tokens: torch.Tensor, e0: torch.Tensor, ctx: torch.Tensor, ctx_img: torch.Tensor | None,
                   rope: torch.Tensor, attn: AttentionFn) -> torch.Tensor:
        options = self._options or {}
        replace = options.get("patches_replace", {}).get("dit", {})
        if not replace:
            return WanDiT.run_blocks(self, tokens, e0, ctx, ctx_img, rope, attn)
        for i, block in enumerate(self.blocks):
            patch = replace.get(("double_block", i))
            if patch is None:
                tokens = block(tokens, e0, ctx, ctx_img, rope, attn)
                continue

            def original(args: dict, block: WanBlock = block) -> dict:
                return {"img": block(args["img"], args["vec"], args["txt"], ctx_img, args["pe"], attn)}
            tokens = patch({"img": tokens, "txt": ctx, "vec": e0, "pe": rope, "transformer_options": options},
                           {"original_block": original})["img"]
        return tokens


class SpacetimeWan21(comfy.model_base.WAN21):
    """Wan 2.1 semantics: known frames are re-noised to the current sigma each step."""


class SpacetimeWan22(comfy.model_base.WAN22):
    """Wan 2.2 TI2V semantics: known frames stay clean and their tokens get timestep 0."""

    def process_timestep(self, timestep: torch.Tensor, x: torch.Tensor, denoise_mask=None, **kwargs):
        if denoise_mask is None:
            return timestep
        patch = tuple(self.diffusion_model.config.patch_size)
        return canvas.token_timesteps(denoise_mask, timestep, patch)  # (B, tokens)


def latent_format_for(channels: int, mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
                      rgb: tuple[Sequence[Sequence[float]], Sequence[float]] | None = None,
                      ) -> comfy.latent_formats.LatentFormat:
    """Wan21 (16 ch) / Wan22 (48 ch) formats, or a custom one from a VAE's statistics. ``rgb``:
    (one [r, g, b] row per channel, bias) for ComfyUI's latent previews (``--preview-method``);
    without it a custom format has none (Wan's own formats bring theirs)."""
    if mean is None and channels in (16, 48):
        return comfy.latent_formats.Wan21() if channels == 16 else comfy.latent_formats.Wan22()
    fmt = comfy.latent_formats.Wan21()
    fmt.latent_channels = channels
    fmt.latents_mean = (mean if mean is not None else torch.zeros(channels)).reshape(1, channels, 1, 1, 1).float()
    fmt.latents_std = (std if std is not None else torch.ones(channels)).reshape(1, channels, 1, 1, 1).float()
    factors, bias = rgb if rgb is not None else (None, None)
    if factors is not None and len(factors) != channels:
        raise ValueError(f"{len(factors)} latent-to-RGB rows for a latent of {channels} channels")
    fmt.latent_rgb_factors = [list(row) for row in factors] if factors is not None else None
    fmt.latent_rgb_factors_bias = list(bias) if bias is not None else None
    fmt.taesd_decoder_name = None
    return fmt


def wrap_dit(dit: WanDiT, shift: float = 5.0, per_token: bool | None = None,
             latent_format: comfy.latent_formats.LatentFormat | None = None,
             name: str = "spacetime") -> comfy.model_patcher.ModelPatcher:
    """A ComfyUI MODEL (ModelPatcher) around ``dit``.

    ``per_token``: known-frame tokens get timestep 0 (default: Wan 2.2 TI2V models);
    ``latent_format``: default from the model's channels (Wan21 / Wan22).
    """
    c = dit.config
    per_token = c.model_type == "ti2v" if per_token is None else per_token
    base = comfy.supported_models.WAN22_T2V if c.out_dim == 48 else comfy.supported_models.WAN21_T2V
    config = base({"image_model": "wan2.1", "model_type": c.model_type, "dim": c.dim,
                   "in_dim": c.in_dim, "out_dim": c.out_dim, "disable_unet_model_creation": True})
    config.sampling_settings["shift"] = float(shift)
    config.latent_format = latent_format or latent_format_for(c.out_dim)
    config.set_inference_dtype(dit.compute_dtype, None)
    cls = SpacetimeWan22 if per_token else SpacetimeWan21
    make_castable(dit)
    dit.__class__ = ComfyWanDiT
    model = cls(config, image_to_video=c.in_dim != c.out_dim, device=None)
    model.diffusion_model = dit
    model.spacetime_name = name
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    log.info("Spacetime DiT %s as a ComfyUI MODEL: %s, shift %.2f, %s", name, c.model_type, shift,
             "per-token timesteps" if per_token else "latent replacement")
    return patcher


def spacetime_dit(model: comfy.model_patcher.ModelPatcher) -> WanDiT | None:
    """Our WanDiT inside a MODEL, or None for a native ComfyUI model."""
    inner = getattr(model.model, "diffusion_model", None)
    return inner if isinstance(inner, ComfyWanDiT) else None
