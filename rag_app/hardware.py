"""What this machine's processors can do, asked once: picks the fast default precision and backend."""

from __future__ import annotations

import functools
from pathlib import Path

_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty where the file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.cache
def cpu_has_bf16() -> bool:
    """True where the CPU has bf16 matrix units (AVX512-BF16 or AMX): bf16 runs ~3x fp32 there."""
    if cpu_flags() & _BF16_FLAGS:
        return True
    try:
        import torch

        return "BF16" in torch.backends.cpu.get_cpu_capability().upper()
    except Exception:  # pragma: no cover - torch always importable here
        return False


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover
        return False
