"""UniPC multistep solver in the flow-matching, data-prediction form that Wan samples with.

UniPC: Zhao, Bai, Rao, Zhou, Lu, "UniPC: A Unified Predictor-Corrector Framework for Fast
Sampling of Diffusion Models", NeurIPS 2023, arXiv:2302.04867 — the B(h) variants of Alg. 2/3
(UniP-p predictor + UniC corrector), in the x0-prediction form of DPM-Solver++ (Lu et al. 2022,
arXiv:2211.01095). Flow matching has ``α = 1 − σ`` and the log-SNR ``λ = log(α/σ)``.

Behaviour matches Wan's ``FlowUniPCMultistepScheduler`` (wan/utils/fm_solvers_unipc.py) and
diffusers' ``UniPCMultistepScheduler(use_flow_sigmas=True)``: warm-up with lower orders
(order of step i ≤ i + 1), lower order at the end (order ≤ steps − i, so the step to σ = 0 is
first order and returns the clean prediction), the corrector applied at the start of every step
after the first using the fresh model output, and none after the last step.

Each step is a linear combination ``x_next = a·x + Σ_j w_j·x0_j`` of the current sample and
the stored x0 predictions; all weights depend only on the sigmas, so they are computed once,
before the loop, in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .common import SIGMA_ONE_EPS, Callback, Denoiser, flow_lambda, notify, sigma_floats


@dataclass(frozen=True)
class _Update:
    """``x_new = a · x_base + Σ weights[k] · x0[step index k]``."""

    a: float
    weights: tuple[tuple[int, float], ...]


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """The ≤ 3×3 UniPC order-condition systems, solved in float64."""
    a, b = torch.tensor(matrix, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64)
    return torch.linalg.solve(a, b).tolist()


def _phi_terms(h: float, order: int, variant: str) -> tuple[float, float, list[float]]:
    """``(e^{−h} − 1, B(h), b)`` of UniPC's order conditions for the x0-prediction form."""
    hh = -h
    h_phi_1 = math.expm1(hh)  # h·φ1(h) with the sign of the data-prediction form
    b_h = hh if variant == "bh1" else math.expm1(hh)
    b, h_phi_k, factorial = [], h_phi_1 / hh - 1.0, 1.0
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return h_phi_1, b_h, b


def _update(sig: list[float], lam: list[float], s: int, t: int, order: int, variant: str,
            corrector_from: int | None) -> _Update:
    """Predictor from step ``s`` to ``t`` (``corrector_from=None``) using x0 of steps s, s-1, ...;
    or corrector of the same step that also uses the fresh x0 at ``t = corrector_from``."""
    sigma_s, sigma_t = sig[s], sig[t]
    if sigma_t == 0.0:  # the limit h → ∞ of the first-order step: return the prediction
        return _Update(0.0, ((s, 1.0),))
    alpha_t = 1.0 - sigma_t
    h = lam[t] - lam[s]
    h_phi_1, b_h, b = _phi_terms(h, order, variant)
    rks = [(lam[s - k] - lam[s]) / h for k in range(1, order)] + [1.0]
    rows = [[rk ** (i - 1) for rk in rks] for i in range(1, order + 1)]
    w: dict[int, float] = {s: -alpha_t * h_phi_1}
    if corrector_from is None:
        if order == 2:
            rhos = [0.5]
        elif order > 2:
            rhos = _solve([r[:-1] for r in rows[:-1]], b[:-1])
        else:
            rhos = []
    else:  # UniC: ρ_c solves all order conditions; its last entry weighs the fresh x0 at t
        rhos = [0.5] if order == 1 else _solve(rows, b)
        rhos, last = rhos[:-1], rhos[-1]
        w[corrector_from] = -alpha_t * b_h * last
        w[s] += alpha_t * b_h * last
    # D1_k = (x0_{s-k} − x0_s) / r_k enters as − α_t·B(h)·ρ_k·D1_k
    for k, (rho, rk) in enumerate(zip(rhos, rks), start=1):
        c = alpha_t * b_h * rho / rk
        w[s - k] = w.get(s - k, 0.0) - c
        w[s] += c
    a = sigma_t / min(sigma_s, 1.0 - SIGMA_ONE_EPS)  # σ_s = 1 is read as 1 − 1e-6, as in λ
    return _Update(a, tuple(sorted(w.items())))


def unipc_plan(sigmas: torch.Tensor, order: int = 2, variant: str = "bh2",
               corrector: bool = True) -> list[tuple[_Update | None, _Update]]:
    """Per step i: (corrector update of x at sigma_i or None, predictor update to sigma_{i+1})."""
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3 (Wan uses 2), got {order!r}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2' (Wan uses bh2), got {variant!r}")
    sig = sigma_floats(sigmas, strict=True)
    n = len(sig) - 1
    lam = [flow_lambda(s) for s in sig]  # σ = 1 read as 1 − 1e-6 (diffusers); σ = 0 -> inf
    orders = [min(order, i + 1, n - i) for i in range(n)]
    plan = []
    for i in range(n):
        corr = None
        if corrector and i > 0:
            corr = _update(sig, lam, i - 1, i, orders[i - 1], variant, corrector_from=i)
        plan.append((corr, _update(sig, lam, i, i + 1, orders[i], variant, corrector_from=None)))
    return plan


def _apply(u: _Update, x: torch.Tensor, x0s: dict[int, torch.Tensor]) -> torch.Tensor:
    out = x * u.a  # a fresh tensor: the additions below may be in place
    for j, wj in u.weights:
        out.add_(x0s[j], alpha=wj)
    return out


@torch.no_grad()
def sample_unipc(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                 callback: Callback | None = None, disable: bool | None = None, order: int = 2,
                 variant: str = "bh2", corrector: bool = True) -> torch.Tensor:
    """UniPC-p with the UniC corrector (``order`` 1–3, ``variant`` "bh2" as Wan, or "bh1").

    ``model(x, sigma, **extra_args) -> x0``; ``x`` is the noisy sample at ``sigmas[0]``.
    ``disable`` (a progress bar switch in k-diffusion) is accepted and unused.
    """
    extra_args = {} if extra_args is None else extra_args
    plan = unipc_plan(sigmas, order, variant, corrector)
    sig = [float(s) for s in sigmas]
    s_in = x.new_ones([x.shape[0]])  # (B,)
    x0s: dict[int, torch.Tensor] = {}
    last_sample = x
    for i, (corr, pred) in enumerate(plan):
        x0s[i] = model(x, sig[i] * s_in, **extra_args)
        if corr is not None:
            x = _apply(corr, last_sample, x0s)
        notify(callback, i, x, sig[i], sig[i + 1], x0s[i])
        x0s.pop(i - order, None)  # keep only the outputs later steps can use
        last_sample = x
        x = _apply(pred, x, x0s)
    return x
