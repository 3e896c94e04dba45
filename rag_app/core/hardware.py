"""What this machine's processors can do, asked once: picks the fast default precision and backend."""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (Linux x86 ``flags``, Arm ``Features``); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in {"flags", "features"}:
            flags.update(value.split())
    return frozenset(flags)


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True where the CPU has native bf16 dot products (AVX512_BF16, AMX-BF16 or Arm BF16): ~3x fp32.

    ``torch.backends.cpu.get_cpu_capability()`` reports ``AMX`` on Sapphire Rapids and later, but only
    ``AVX512`` on AMD Zen 4/5 even though they have AVX512_BF16, so the cpuinfo flags are checked too.
    """
    import torch

    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    if "AMX" in capability or "BF16" in capability:
        return True
    flags = cpu_flags()
    if {"avx512_bf16", "amx_bf16"} & flags:
        return True
    return platform.machine().lower() in {"aarch64", "arm64"} and "bf16" in flags


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def release_freed_memory() -> None:
    """Hand memory that the process has freed back to the OS, where the C library can (glibc).

    glibc keeps freed heap memory in its arenas. After a model is loaded in fp32 and then cast to bf16,
    the process can keep much of the fp32 weights' memory although it no longer uses it. Does nothing
    on other C libraries.
    """
    import ctypes

    if platform.system() != "Linux":
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library already loaded into this process
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return
    trim(0)
