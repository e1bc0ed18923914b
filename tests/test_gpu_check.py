"""bench/gpu_check.sh in its tiny CPU mode: the same code path as on a GPU, with tiny configs.

It must run, print a row with finite numbers for ours, ComfyUI and diffusers in every case, and
exit non-zero when an implementation disagrees with the reference.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402

CASES = ["DiT tiny 2.1-shaped", "DiT tiny 2.2-shaped", "VAE tiny 2.1-shaped 32x32x9", "VAE tiny 2.2-shaped 64x64x9"]


def gpu_check_sh(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}   # CPU, whatever the machine
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--tiny", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def table_rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    """(case, impl) -> the row's remaining cells, from the printed markdown table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 9 and cells[0] != "case":
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def number(cell: str) -> float:
    value = float(cell.rstrip("%"))
    assert math.isfinite(value), cell
    return value


@pytest.mark.slow
def test_tiny_mode_compares_all_implementations():
    r = gpu_check_sh()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "GPU:" in r.stdout and "torch" in r.stdout          # the header of the wrapper
    assert "gpu_check passed" in r.stdout and "(0 not compared)" in r.stdout
    rows = table_rows(r.stdout)
    for case in CASES:
        impls = [impl for c, impl in rows if c == case]
        ours = [i for i in impls if i.startswith("ours")]
        assert ours and "comfy" in impls and "diffusers" in impls, (case, impls)
        if case.startswith("DiT"):
            assert ours == ["ours:sdpa", "ours:math"]
        for impl in impls:
            time_ms, peak, err, time_ratio, mem_ratio, pct, check = rows[(case, impl)]
            assert number(time_ms) > 0 and number(peak) > 0 and number(pct) > 0
            assert number(time_ratio) > 0 and number(mem_ratio) > 0
            assert check.startswith("ok"), (case, impl, check)
            if impl == "comfy":
                assert err == "reference" and number(time_ratio) == 1.0
            else:
                assert 0 <= number(err) < 1e-4, (case, impl, err)


@pytest.mark.slow
def test_disagreement_fails_the_check():
    """Our outputs perturbed by 1%: our rows fail and the exit status is 1; the references pass."""
    r = gpu_check_sh("--parts", "dit", "--models", "1.3b", "--perturb", "0.01")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "gpu_check FAILED" in r.stdout
    rows = table_rows(r.stdout)
    assert rows[("DiT tiny 2.1-shaped", "ours:sdpa")][-1].startswith("FAIL: relative error 1.00e-02")
    assert rows[("DiT tiny 2.1-shaped", "ours:math")][-1].startswith("FAIL")
    assert rows[("DiT tiny 2.1-shaped", "diffusers")][-1].startswith("ok")


def _row(impl: str, out: torch.Tensor) -> dict:
    return {"case": "c", "impl": impl, "flops": 1.0, "seconds": 1.0, "peak": 1, "out": out}


def test_compare_flags_errors_beyond_the_tolerance_and_nan():
    ref = torch.ones(4, 4)
    rows = [_row("ours:sdpa", ref * (1 + 5e-5)), _row("ours:math", ref * 1.01),
            _row("comfy", ref), _row("diffusers", ref.clone().fill_(float("nan")))]
    gpu_check.compare(rows, torch.float32)
    fails = {r["impl"] for r in rows if "fail" in r}
    assert fails == {"ours:math", "diffusers"}
    assert rows[0]["err"] == pytest.approx(5e-5, rel=1e-2)
    assert all("out" not in r for r in rows)


def test_compare_falls_back_to_diffusers_then_to_nothing():
    rows = [{"case": "c", "impl": "comfy", "skip": "out of memory"}, _row("ours:sdpa", torch.ones(3) * 2),
            _row("diffusers", torch.ones(3))]
    gpu_check.compare(rows, torch.bfloat16)
    assert rows[1]["ref"] == "diffusers" and rows[1]["err"] == pytest.approx(1.0) and "fail" in rows[1]
    alone = [_row("ours:sdpa", torch.ones(3))]
    gpu_check.compare(alone, torch.bfloat16)
    assert alone[0]["unchecked"] == "no reference ran" and "fail" not in alone[0] and "err" not in alone[0]


def test_gpu_profile_tiny_lists_kernels_of_both_and_they_agree():
    """bench/gpu_profile.py (the kernel-level diagnostic beside the check) in its tiny CPU mode:
    a timing line and a profiler table for ComfyUI and for ours, and ours agrees in fp32."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_profile.py"), "--tiny", "--rows", "4"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    heads = [line for line in run.stdout.splitlines() if line.startswith("== ")]
    assert len(heads) == 2, run.stdout[-2000:]
    assert heads[0].startswith("== comfy:") and heads[1].startswith("== ours:sdpa:"), heads
    err = float(heads[1].rsplit("relative error vs comfy", 1)[1])
    assert err < 1e-4, heads[1]
    assert run.stdout.count("Self CPU time total") == 2, run.stdout[-2000:]
    assert "aten::scaled_dot_product_attention" in run.stdout          # ours' attention shows up
