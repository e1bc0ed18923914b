"""Scheduler and solver nodes: our flow schedules as SIGMAS and our solvers as SAMPLER, so they
work with ComfyUI's SamplerCustomAdvanced (and any node taking SIGMAS / SAMPLER)."""
from __future__ import annotations

import functools
import logging

import comfy.samplers
from comfy_api.latest import io

from ..samplers import SOLVERS, SPACINGS, flow_sigmas, truncate_for_denoise
from ..samplers.presets import FEW_STEP_PRESETS, preset_sigmas
from .errors import blamed_on
from .validation import NONE, SpacetimeNode

log = logging.getLogger("spacetime.nodes")


class SpacetimeScheduler(SpacetimeNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeScheduler",
            display_name="Flow Scheduler (Spacetime)",
            category="Spacetime/sampling",
            description="Shifted flow-matching sigmas, by default exactly Wan's official UniPC schedule; a "
                        "few-step preset gives a step-distilled model's own schedule (lightx2v 4-step LoRAs).",
            inputs=[
                io.Int.Input("steps", default=40, min=1, max=1000,
                             tooltip="model calls; Wan's defaults: 50 (2.1 T2V), 40 (I2V, 2.2 A14B)"),
                io.Float.Input("shift", default=5.0, min=0.01, max=100.0, step=0.1, round=0.01,
                               tooltip="σ' = s·σ/(1+(s−1)·σ); Wan: 5 (3 at 480p I2V), 12 for 2.2 T2V A14B"),
                io.Combo.Input("spacing", options=list(SPACINGS), default="wan",
                               tooltip="wan: official Wan UniPC; wan_dpm: official Wan DPM++; diffusers_unipc, "
                                       "diffusers_euler: diffusers' schedulers; comfy_simple: ComfyUI 'simple'"),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="< 1: start part-way (video-to-video); same rule as BasicScheduler"),
                io.Combo.Input("preset", options=[NONE, *FEW_STEP_PRESETS], default=NONE, optional=True,
                               tooltip="a step-distilled model's schedule, in place of steps, shift and spacing "
                                       "(denoise < 1 keeps its last steps); sample at cfg 1 with its solver ("
                                       + ", ".join(f"{n}: {p.solver}" for n, p in FEW_STEP_PRESETS.items()) + ")"),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, steps, shift, spacing, denoise, preset=NONE) -> io.NodeOutput:
        if preset == NONE:
            return io.NodeOutput(flow_sigmas(steps, shift, spacing, denoise=denoise))
        p = FEW_STEP_PRESETS[preset]
        log.info("SpacetimeScheduler: preset %s, %d steps at shift %g (steps, shift and spacing not used); "
                 "sample at cfg %g with the %s solver", preset, p.steps, p.shift, p.cfg, p.solver)
        sigmas = preset_sigmas(preset)
        with blamed_on(cls, "denoise"):
            return io.NodeOutput(sigmas if denoise >= 1.0 else truncate_for_denoise(sigmas, denoise))


class SpacetimeSolver(SpacetimeNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpacetimeSolver",
            display_name="Flow Solver (Spacetime)",
            category="Spacetime/sampling",
            description="Flow-matching solvers as a SAMPLER for SamplerCustomAdvanced: UniPC as in Wan's "
                        "official code, DPM++(2M), Euler, and LCM for step-distilled models.",
            inputs=[
                io.Combo.Input("solver", options=list(SOLVERS), default="unipc",
                               tooltip="unipc as in Wan's official code, dpm++ 2m, euler, or lcm for step-distilled models"),
                io.Int.Input("order", default=2, min=1, max=3,
                             tooltip="UniPC order (Wan uses 2; 3 can help unguided sampling); other solvers ignore it"),
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, solver, order) -> io.NodeOutput:
        fn = SOLVERS[solver]
        if solver == "unipc":
            fn = functools.partial(fn, order=order)
        # KSAMPLER calls fn(model, x, sigmas, extra_args=..., callback=..., disable=...) in flow space
        # (x = σ·noise + (1 − σ)·latent for flow models) with model(x, sigma, **extra_args) -> x0.
        return io.NodeOutput(comfy.samplers.KSAMPLER(fn))


NODES = [SpacetimeScheduler, SpacetimeSolver]
