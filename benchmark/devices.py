"""Where and in what precision a run computes: the device, whether this CPU computes bf16 natively, and what
`precision=auto` means here."""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import replace

import torch

from benchmark.registry import UsageError


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def resident(split, device: torch.device):
    """(split, on_device). On CUDA, a tensor training set that fits in a quarter of the free memory moves to the
    device once (batches are then gathered there); a larger one is pinned for asynchronous copies."""
    x = split.x
    if device.type != "cuda" or not isinstance(x, torch.Tensor):
        return split, False
    if x.numel() * x.element_size() < 0.25 * torch.cuda.mem_get_info(device)[0]:
        return replace(split, x=x.to(device)), True
    return replace(split, x=x.pin_memory()), False


def cpu_bf16_native() -> str:
    """The CPU feature that computes bf16 matrix products natively ('amx_bf16' or 'avx512_bf16'), or '' when
    there is none (bf16 would then be emulated, far slower than fp32). Read from /proc/cpuinfo, not assumed.
    oneDNN (which runs torch's CPU bf16 matmuls and convolutions) capped below its bf16 ISA by ONEDNN_MAX_CPU_ISA
    emulates bf16 as a CPU without it would: none then (e.g. ONEDNN_MAX_CPU_ISA=AVX2 turns any CPU into CI's
    AVX2-only kind for bf16)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if cap != "ALL" and not (
        cap.startswith("AVX512_CORE_BF16") or "AMX" in cap or cap.startswith("AVX10") or cap == "AVX512_CORE_FP16"
    ):
        return ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return ""
    return next((x for x in ("amx_bf16", "avx512_bf16") if x in flags), "")


# `precision=auto` on a CPU with native bf16 matmul: bf16 autocast of the student's forward (losses stay fp32).
# Decided by a paired comparison of fp32 and bf16 runs (docs/results.md, "bf16 on the CPU").
CPU_AUTO_BF16 = False


@functools.lru_cache(maxsize=1)
def _warn_emulated_bf16() -> None:
    """Once per process: bf16 asked for on a CPU that would emulate it."""
    print(
        "warning: precision=bf16 on a CPU without native bf16 (no avx512_bf16 or amx_bf16): bf16 is emulated "
        "here, many times slower than fp32 (precision=auto or fp32 avoids it)",
        file=sys.stderr,
    )


def resolve_precision(precision: str, device: torch.device) -> str:
    """What `precision` means on this device: `auto` is bf16 autocast on CUDA, and on a CPU with native bf16
    matmul when CPU_AUTO_BF16 says so; fp32 elsewhere. Runs record the result (`precision_resolved`)."""
    if precision == "bf16":
        if device.type == "cpu" and not cpu_bf16_native():
            _warn_emulated_bf16()
        return "bf16"
    if precision == "auto" and (device.type == "cuda" or (CPU_AUTO_BF16 and device.type == "cpu" and cpu_bf16_native())):
        return "bf16"
    return "fp32"
