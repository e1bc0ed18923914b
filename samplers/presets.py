"""Few-step presets: how step-distilled Wan models (distill LoRAs or merged weights) are sampled
by the people who trained them — the timesteps, the shift, the guidance and the update rule.

lightx2v (ModelTC/LightX2V; step and CFG distillation of Wan by DMD, Yin et al. 2023,
arXiv:2311.18828, through Self-Forcing-Plus) samples its 4-step models as follows
(``lightx2v/models/schedulers/wan/step_distill/scheduler.py``, configs
``configs/distill/wan21/wan_t2v_distill_lora_4step_cfg.json``, ``…/wan22/wan_moe_t2v_distill_lora.json``):

* timesteps ``denoising_step_list = [1000, 750, 500, 250]``, each taken from a 1000-entry table
  ``linspace(1, 0, 1001)[:-1]`` shifted with ``sample_shift = 5``: σ = shift(t / 1000), so
  σ = 1, 15/16, 5/6, 5/8, then 0 — the timesteps the model sees are 1000, 937.5, 833.3, 625;
* ``enable_cfg: false``: one model call per step, i.e. cfg 1;
* Wan 2.1 (``WanStepDistillScheduler.step_post``): x0 = x − σ·v, then fresh noise to the next
  σ, ``(1 − σ')·x0 + σ'·ε``: the multistep consistency sampling of our ``lcm`` solver;
* Wan 2.2 A14B (``Wan22StepDistillScheduler``): x0 + σ'·v, deterministic — our ``euler``; the
  high-noise expert runs the first ``boundary_step_index = 2`` steps (σ = 1, 15/16), which Wan
  2.2's own boundaries (0.875 T2V, 0.900 I2V) reproduce.

ComfyUI's own Wan 2.2 14B 4-step template (LoraLoaderModelOnly with the lightx2v LoRAs, 4 steps of
euler on the 'simple' scheduler at shift 5, cfg 1, the experts switched after step 2) samples the
same sigmas.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedules import NUM_TRAIN_TIMESTEPS, shift_sigma


@dataclass(frozen=True)
class FewStepPreset:
    timesteps: tuple[int, ...]  # of NUM_TRAIN_TIMESTEPS, as the trainer lists them (descending)
    shift: float                # applied to t / 1000 as to every flow schedule
    cfg: float                  # 1: CFG was distilled away, one model call per step
    solver: str                 # one of samplers.SOLVERS: the update rule of the trainer's scheduler
    use: str                    # which weights it is for

    @property
    def steps(self) -> int:
        return len(self.timesteps)


LIGHTX2V_STEPS = (1000, 750, 500, 250)
FEW_STEP_PRESETS: dict[str, FewStepPreset] = {
    "lightx2v_4step": FewStepPreset(LIGHTX2V_STEPS, 5.0, 1.0, "lcm",
                                    "Wan 2.1 T2V / I2V 14B with a lightx2v 4-step distill LoRA (or the distilled model)"),
    "lightx2v_wan22_4step": FewStepPreset(LIGHTX2V_STEPS, 5.0, 1.0, "euler",
                                          "Wan 2.2 A14B with the lightx2v 4-step high- and low-noise LoRAs"),
}


def timestep_sigmas(timesteps: tuple[int, ...] | list[int], shift: float) -> torch.Tensor:
    """``σ = shift(t / 1000)`` for each listed timestep, then 0: ``(len + 1,)`` float32."""
    ts = [int(t) for t in timesteps]
    if not ts or any(not 0 < t <= NUM_TRAIN_TIMESTEPS for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be a strictly decreasing list within (0, {NUM_TRAIN_TIMESTEPS}], got {ts}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0 (1 = no shift), got {shift!r}")
    sigmas = shift_sigma(torch.tensor(ts, dtype=torch.float64) / NUM_TRAIN_TIMESTEPS, float(shift))
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)


def preset_sigmas(name: str) -> torch.Tensor:
    """The SIGMAS of the few-step preset ``name`` (see ``FEW_STEP_PRESETS``)."""
    if name not in FEW_STEP_PRESETS:
        raise ValueError(f"unknown few-step preset {name!r}; choose one of {', '.join(FEW_STEP_PRESETS)}")
    preset = FEW_STEP_PRESETS[name]
    return timestep_sigmas(preset.timesteps, preset.shift)
