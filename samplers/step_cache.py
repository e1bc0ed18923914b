"""Fewer DiT evaluations: a step cache that forecasts the model's output instead of evaluating
it when the forecast is good enough, and the ``speed`` presets that also set guidance truncation
and text key/value reuse.

The criterion. Along a sampling trajectory the model output (Wan: the velocity) is a smooth
function of the noise level σ. The cache keeps the outputs of the last two real evaluations and
has two forecasts of the output at a later σ: reuse the last one (what TeaCache and EasyCache do)
or extend the straight line through both. Whether to skip is decided from the forecasts' own
errors, measured, not guessed: at every real evaluation both forecasts that *could* have been
used are compared with the true output (relative L1 error). Reuse errs by about ``c0·h`` after a
gap h; the line by about ``c1·h·(h + h0)`` (``½|v''|`` times the gap terms, for points h0 apart);
each measurement re-estimates ``c0`` and ``c1``. For a step that may be skipped, the forecast with
the smaller predicted error is used if that prediction is at most ``threshold``. Nothing is
calibrated per model family, so a model (or a stretch of a schedule) whose output bends sharply
is evaluated more often. On the embedded model at 20 steps, along Euler's steady trajectory the
line is the better forecast from about a third of the schedule on (about half the error of
reuse). Along a multistep solver's trajectory (UniPC) the output zig-zags from step to step,
which neither forecast follows: reuse is the better one there until about step 16, and fewer
steps pass the threshold than along Euler's. The first steps
(``warmup``, and always three real evaluations, which measure both constants) and the last ones
(``cooldown``, where the sample's detail is formed) are evaluated, and at most ``max_skips``
forecasts run in a row. The prediction is an estimate, not a bound: ``threshold`` is a knob whose
values the presets set from measurements (bench/bench_step_cache.py).

The cache works per batch row group (conditional and unconditional rows each keep their own
history), so a batch that loses its unconditional rows when guidance stops keeps forecasting the
conditional ones. Rows are evaluated or forecast together: one DiT call serves them all.

Plain PyTorch: ``pipeline.generate`` uses it around the DiT, the ComfyUI node
(``nodes/step_cache.py``) around any diffusion model's call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Hashable, Sequence

import torch


@dataclass(frozen=True)
class Speed:
    """What one ``speed`` preset does (the expert values behind the knob).

    threshold: largest predicted relative L1 error of a forecast output for a step to be skipped
      (0: never skip). warmup / cooldown: fractions of the schedule's steps at the start / end that
      are always evaluated. max_skips: forecasts in a row at most. cfg_until: fraction of the steps
      (from the start) that run the unconditional pass; later steps run the conditional pass
      only (guidance scale 1). reuse_text: keep every block's cross-attention text keys and values
      for the run instead of recomputing them each step (our DiT only; more memory).
    """

    threshold: float = 0.0
    warmup: float = 0.15
    cooldown: float = 0.1
    max_skips: int = 2
    cfg_until: float = 1.0
    reuse_text: bool = False

    def __post_init__(self) -> None:
        check_speed(self)

    @property
    def skips(self) -> bool:
        return self.threshold > 0 and self.max_skips > 0


RANGES = {"threshold": (0.0, 2.0), "warmup": (0.0, 1.0), "cooldown": (0.0, 1.0), "max_skips": (0, 16),
          "cfg_until": (0.0, 1.0)}


def check_speed(s: Speed) -> None:
    """ValueError naming the field and its valid range for any value out of range or NaN."""
    for name, (low, high) in RANGES.items():
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low <= value <= high:
            raise ValueError(f"speed setting {name}={value!r} is outside its valid range {low}..{high}")
    if not isinstance(s.max_skips, int):
        raise ValueError(f"speed setting max_skips={s.max_skips!r} must be a whole number 0..16")
    if s.warmup + s.cooldown > 1.0:
        raise ValueError(f"speed settings warmup + cooldown = {s.warmup + s.cooldown:g} leave no step to skip; "
                         "keep their sum at most 1")


# The knob. "off" is the exact uncached sampler. The values were chosen on prompts of the embedded
# model at 20 and 50 steps (bench/bench_step_cache.py; results in bench/RESULTS.md). "balanced"
# stops the unconditional pass after 60% of the steps and forecasts with a low threshold: at the
# same evaluation count as forecasting alone with a higher one, it keeps more prompts right.
SPEEDS: dict[str, Speed] = {
    "off": Speed(),
    "quality": Speed(threshold=0.1, max_skips=2, reuse_text=True),
    "balanced": Speed(threshold=0.2, warmup=0.2, cooldown=0.05, max_skips=5, cfg_until=0.6, reuse_text=True),
    "fast": Speed(threshold=1.0, warmup=0.1, cooldown=0.05, max_skips=5, reuse_text=True),
}
DEFAULT_SPEED = "balanced"


def speed_settings(speed: str | Speed, **overrides: float) -> Speed:
    """A preset by name (or a ``Speed`` as is), with any fields overridden."""
    if isinstance(speed, Speed):
        base = speed
    elif speed in SPEEDS:
        base = SPEEDS[speed]
    else:
        raise ValueError(f"unknown speed {speed!r}; choose one of {', '.join(SPEEDS)}")
    return replace(base, **overrides) if overrides else base


def guided_steps(speed: Speed, steps: int) -> int:
    """How many of ``steps`` (from the start) run the unconditional pass."""
    return steps if speed.cfg_until >= 1.0 else max(0, math.ceil(speed.cfg_until * steps - 1e-9))


@dataclass
class _History:
    sigmas: list[float] = field(default_factory=list)        # last two real evaluations, oldest first
    outputs: list[torch.Tensor] = field(default_factory=list)
    # error constants of the two forecasts, None until measured: reuse grows as c0·h, the
    # straight line as c1·h·(h + h0)
    c0: float | None = None
    c1: float | None = None
    skips: int = 0                                           # forecasts since the last evaluation

    def predict(self, sigma: float) -> tuple[bool | None, float]:
        """(whether the line is the better forecast at ``sigma`` (None: no forecast yet), its
        predicted relative error)."""
        if self.c0 is None or self.c1 is None:          # three real evaluations measure both
            return None, math.inf
        h = self.sigmas[-1] - sigma
        if h <= 0:
            return None, math.inf
        reuse, line = self.c0 * h, self.c1 * h * (h + self.sigmas[0] - self.sigmas[1])
        return (False, reuse) if reuse <= line else (True, line)

    def forecast(self, sigma: float) -> tuple[torch.Tensor | None, float]:
        """(the better forecast of the output at ``sigma``, its predicted relative error)."""
        use_line, error = self.predict(sigma)
        if use_line is None:
            return None, error
        if not use_line:
            return self.outputs[-1], error
        return self._line(self.sigmas[-1] - sigma, self.sigmas[0] - self.sigmas[1]), error

    def _line(self, h: float, h0: float) -> torch.Tensor:
        va, vb = self.outputs
        return torch.lerp(vb, va, -h / h0)                    # vb + (h / h0)·(vb − va)

    def record(self, sigma: float, output: torch.Tensor) -> float | None:
        """Add a real evaluation and re-measure both error constants against it; returns the
        measured relative error of the forecast that would have been used."""
        if self.sigmas and sigma > self.sigmas[-1]:    # the noise level went up (a restart): start over
            self.sigmas, self.outputs, self.c0, self.c1 = [], [], None, None
        elif self.sigmas and sigma == self.sigmas[-1]:  # the same level again (Heun, PAG …): keep the newest
            self.outputs[-1] = output.detach().clone()
            self.skips = 0
            return None
        error = None
        if self.outputs:
            use_line, _ = self.predict(sigma)
            out = output.float()
            norm = out.abs().mean().clamp_min(1e-12)
            h = self.sigmas[-1] - sigma
            e0 = float((out - self.outputs[-1].float()).abs().mean() / norm)
            error, self.c0 = e0, e0 / h
            if len(self.outputs) == 2:
                h0 = self.sigmas[0] - self.sigmas[1]
                e1 = float((out - self._line(h, h0).float()).abs().mean() / norm)
                if use_line:
                    error = e1
                self.c1 = e1 / (h * (h + h0))
        self.sigmas = (self.sigmas + [sigma])[-2:]
        self.outputs = (self.outputs + [output.detach().clone()])[-2:]
        self.skips = 0
        return error


class StepCache:
    """Decides, per call of the model, to evaluate it or to forecast its output.

    ``cache(rows, sigma, x, evaluate)``: ``rows`` names the equal batch chunks of ``x`` (e.g.
    ``("cond", "uncond")`` or ComfyUI's uuids, with the context window where one is sampled
    window by window), ``evaluate()`` runs the model on the whole batch.
    ``sigmas`` is the run's schedule (for the warm-up and cool-down fractions; or call
    :meth:`begin` with it). Counts:
    ``evaluated`` / ``skipped`` in batch rows (one row = one DiT evaluation of one sample);
    ``unguided``: unconditional rows left out after the guided steps (``cfg_until``), which never
    reach the cache, so whoever leaves them out counts them here.
    """

    def __init__(self, speed: str | Speed = DEFAULT_SPEED, sigmas: Sequence[float] | torch.Tensor | None = None) -> None:
        self.speed = speed_settings(speed)
        self.evaluated = 0
        self.skipped = 0
        self.unguided = 0
        self.errors: list[float] = []       # measured forecast errors, for reports and tests
        self.begin([1.0, 0.0] if sigmas is None else sigmas)

    def begin(self, sigmas: Sequence[float] | torch.Tensor) -> None:
        """Start a run along ``sigmas`` (histories are dropped; the counts add up over runs)."""
        self.sigmas = [float(s) for s in torch.as_tensor(sigmas).reshape(-1).tolist()]
        self.steps = max(1, len(self.sigmas) - 1)
        self.history: dict[Hashable, _History] = {}

    def step_of(self, sigma: float) -> int:
        """Index of the schedule step whose noise level is nearest to ``sigma``."""
        return min(range(self.steps), key=lambda i: abs(self.sigmas[i] - sigma))

    def may_skip(self, sigma: float) -> bool:
        s = self.speed
        if not s.skips:
            return False
        i = self.step_of(sigma)
        return i >= s.warmup * self.steps and i < self.steps - s.cooldown * self.steps

    def __call__(self, rows: Sequence[Hashable], sigma: float, x: torch.Tensor,
                 evaluate: Callable[[], torch.Tensor]) -> torch.Tensor:
        rows = tuple(rows)
        n = x.shape[0]
        if not rows or n % len(rows):
            rows = tuple(range(n))                  # unknown grouping: every sample its own row
        key_shape = tuple(x.shape[1:])
        histories = [self.history.setdefault((r, key_shape), _History()) for r in rows]
        if self.may_skip(sigma):
            guesses = [h.forecast(sigma) for h in histories]
            if all(f is not None and e <= self.speed.threshold and h.skips < self.speed.max_skips
                   for h, (f, e) in zip(histories, guesses)):
                self.skipped += n
                for h in histories:
                    h.skips += 1
                return torch.cat([f for f, _ in guesses]).to(x.dtype)
        out = evaluate()
        self.evaluated += n
        for h, chunk in zip(histories, out.chunk(len(rows))):
            error = h.record(sigma, chunk)
            if error is not None:
                self.errors.append(error)
        return out

    def report(self) -> str:
        """The counts against an uncached run (every row of every call evaluated, guidance in
        every step)."""
        total = self.evaluated + self.skipped + self.unguided
        return (f"{self.evaluated} of {total} DiT evaluations run, {self.skipped} forecast, {self.unguided} "
                f"unconditional left out after the guided steps ({total / max(self.evaluated, 1):.2f}x fewer)")
