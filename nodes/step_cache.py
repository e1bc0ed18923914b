"""Step Cache (Spacetime): a MODEL patch that makes sampling run fewer DiT evaluations, with any
sampler (ours, KSampler, SamplerCustom) and any Wan MODEL (ours or ComfyUI's own).

The rules are the library's (``samplers.step_cache``); this module only hooks them into
ComfyUI's sampling: an ``OUTER_SAMPLE`` wrapper starts a fresh cache for each run, a
``DIFFUSION_MODEL`` wrapper evaluates or forecasts each call, and a ``CALC_COND_BATCH`` wrapper
leaves out the unconditional pass after the guided steps (the model output then stands for both,
which is guidance scale 1, as in ``samplers.guidance``). Text key/value reuse acts on the
pack's own DiT (``ComfyWanDiT`` reads the run's memo from ``transformer_options``).
"""
from __future__ import annotations

import logging

import comfy.model_patcher
import comfy.patcher_extension as pe
from comfy_api.latest import io

from ..model.dit import TextMemo
from ..samplers.step_cache import DEFAULT_SPEED, RANGES, SPEEDS, Speed, StepCache, guided_steps
from .comfy_model import TEXT_MEMO as MEMO
from .errors import blamed_on, node_error
from .validation import SpacetimeNode

log = logging.getLogger("spacetime.nodes")

KEY = "spacetime_step_cache"         # transformer_options entry: the node's settings, then the run
CUSTOM = "custom"
# other step caches of ComfyUI that skip evaluations by their own rule (two rules would fight)
OTHER_CACHES = ("easycache",)


class _Run:
    """The state of one sampling run: the cache and the schedule it runs on."""

    def __init__(self, speed: Speed, sigmas) -> None:
        self.cache = StepCache(speed, sigmas)
        self.sigmas = [float(s) for s in sigmas]
        n = len(self.sigmas) - 1
        guided = guided_steps(speed, n)
        # steps at sigma >= this run the unconditional pass (inf: none do, 0: all do)
        self.guided_down_to = 0.0 if guided >= n else float("inf") if guided == 0 else self.sigmas[guided - 1]


def _outer_sample(executor, *args, **kwargs):
    guider = executor.class_obj
    original = guider.model_options
    options = comfy.model_patcher.create_model_options_clone(original)
    transformer = options.setdefault("transformer_options", {})
    clash = [name for name in OTHER_CACHES if name in transformer]
    if clash:
        raise ValueError(f"SpacetimeStepCache: input 'model': this MODEL also carries ComfyUI's {clash[0]} patch; "
                         "two step caches would each skip steps by their own rule: use one of them")
    speed = transformer[KEY]
    run = _Run(speed.cache.speed if isinstance(speed, _Run) else speed, args[3])
    transformer[KEY] = run
    if speed.reuse_text:
        transformer[MEMO] = TextMemo()
    guider.model_options = options
    try:
        return executor(*args, **kwargs)
    finally:
        guider.model_options = original
        log.info("Step Cache (Spacetime): %s", run.cache.report())


def _diffusion_model(executor, *args, **kwargs):
    options = args[-1] if isinstance(args[-1], dict) else kwargs.get("transformer_options", {})
    run = options.get(KEY)
    sigmas = options.get("sigmas")
    if not isinstance(run, _Run) or sigmas is None:  # called outside a sampling run
        return executor(*args, **kwargs)
    x = args[0]
    rows = tuple(options.get("uuids") or options.get("cond_or_uncond") or ())
    window = options.get("context_window")          # ComfyUI's context windows: one history per window
    if window is not None:
        where = tuple(getattr(window, "index_list", ()) or ())
        rows = tuple((r, where) for r in (rows or range(x.shape[0])))
    return run.cache(rows, float(sigmas.reshape(-1)[0]), x, lambda: executor(*args, **kwargs))


def _calc_cond_batch(executor, model, conds, x_in, timestep, model_options):
    run = model_options.get("transformer_options", {}).get(KEY)
    # only the plain (positive, negative) pair of CFG; other guiders' calls (three conds, or
    # [None, negative] as skip-layer guidance makes) run as they are
    if (isinstance(run, _Run) and len(conds) == 2 and conds[0] is not None and conds[1] is not None
            and float(timestep.reshape(-1)[0]) < run.guided_down_to):
        out = executor(model, [conds[0]], x_in, timestep, model_options)
        run.cache.unguided += x_in.shape[0]
        return [out[0], out[0].clone()]   # the unconditional prediction equals the conditional: scale 1
    return executor(model, conds, x_in, timestep, model_options)


def does_something(speed: Speed) -> bool:
    return speed.skips or speed.cfg_until < 1.0 or speed.reuse_text


def patch_model(model, speed: Speed):
    """A clone of ComfyUI MODEL ``model`` that samples with the step cache of ``speed`` (replacing
    a Step Cache the MODEL already carries; "off" removes it)."""
    m = model.clone()
    for kind in (pe.WrappersMP.OUTER_SAMPLE, pe.WrappersMP.DIFFUSION_MODEL, pe.WrappersMP.CALC_COND_BATCH):
        m.remove_wrappers_with_key(kind, KEY)
    transformer = m.model_options.get("transformer_options", {})
    transformer.pop(KEY, None)
    transformer.pop(MEMO, None)
    if not does_something(speed):
        return m
    m.model_options.setdefault("transformer_options", {})[KEY] = speed
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, KEY, _outer_sample)
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, KEY, _diffusion_model)
    m.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, KEY, _calc_cond_batch)
    return m


class SpacetimeStepCache(SpacetimeNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        preset = SPEEDS[DEFAULT_SPEED]
        expert = f"used when speed is '{CUSTOM}'"
        return io.Schema(
            node_id="SpacetimeStepCache",
            display_name="Step Cache (Spacetime)",
            category="Spacetime/sampling",
            description="Fewer DiT evaluations for any sampler: forecasts the model's output where it is "
                        "predictable, stops the unconditional pass after the guided steps and keeps the "
                        "text keys/values for the run. One knob, 'speed'; 'off' samples exactly as without.",
            inputs=[
                io.Model.Input("model", tooltip="any Wan MODEL; the patched copy goes to any sampler"),
                io.Combo.Input("speed", options=[*SPEEDS, CUSTOM], default=DEFAULT_SPEED,
                               tooltip="off: exact; quality, balanced, fast: about 1.4x, 2.1x and 2.4x fewer evaluations on "
                                       "the embedded model at 20 UniPC steps, 1.9x, 3.2x and 3.5x at 50 (more with "
                                       "Euler; bench/RESULTS.md)"),
                io.Float.Input("threshold", default=preset.threshold, min=RANGES["threshold"][0],
                               max=RANGES["threshold"][1], step=0.01,
                               tooltip=f"largest predicted relative error of a forecast step ({expert})"),
                io.Float.Input("warmup", default=preset.warmup, min=0.0, max=1.0, step=0.01,
                               tooltip=f"fraction of the first steps always evaluated ({expert})"),
                io.Float.Input("cooldown", default=preset.cooldown, min=0.0, max=1.0, step=0.01,
                               tooltip=f"fraction of the last steps always evaluated ({expert})"),
                io.Int.Input("max_skips", default=preset.max_skips, min=RANGES["max_skips"][0],
                             max=RANGES["max_skips"][1], tooltip=f"forecast steps in a row at most ({expert})"),
                io.Float.Input("cfg_until", default=preset.cfg_until, min=0.0, max=1.0, step=0.01,
                               tooltip=f"fraction of the steps that run the negative prompt; 1 = all ({expert})"),
                io.Boolean.Input("reuse_text", default=preset.reuse_text,
                                 tooltip=f"keep the text keys/values for the run; Spacetime DiT only ({expert})"),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, speed, threshold=0.0, warmup=0.15, cooldown=0.1, max_skips=2, cfg_until=1.0,
                reuse_text=False) -> io.NodeOutput:
        if speed == CUSTOM:
            with blamed_on(cls, "cooldown"):
                settings = Speed(threshold=threshold, warmup=warmup, cooldown=cooldown, max_skips=max_skips,
                                 cfg_until=cfg_until, reuse_text=reuse_text)
        else:
            settings = SPEEDS[speed]
        if "easycache" in model.model_options.get("transformer_options", {}) and does_something(settings):
            raise node_error(cls, "model", "this MODEL already carries ComfyUI's EasyCache / LazyCache patch; "
                                           "two step caches would each skip steps by their own rule: use one")
        return io.NodeOutput(patch_model(model, settings))


NODES = [SpacetimeStepCache]
