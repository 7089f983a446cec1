"""Which CPU this is: its name and the vector extensions that decide which kernels run.

The machines multibox runs on differ: an AMD EPYC with AVX2, an Intel Xeon with AVX-512, VNNI
(int8 dot products) and AMX (bf16 / int8 tile units). Float results differ in their last bits
between AVX2 and AVX-512 kernels, and speed differs several-fold, so every figure names its CPU.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["cpu_extensions", "cpu_label", "cpu_name", "describe_cpu", "load_average"]

# /proc/cpuinfo flag -> the name people use for it, in the order they appeared in x86 CPUs
_EXTENSIONS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "VNNI",
    "avx512_bf16": "AVX512-BF16",
    "amx_tile": "AMX",
}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_name() -> str:
    """The CPU's model name, e.g. ``"AMD EPYC 7B13"`` or ``"Intel(R) Xeon(R) Processor"``."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_extensions(flags: str | None = None) -> list[str]:
    """The vector extensions among AVX2, AVX-512, VNNI, AVX512-BF16 and AMX that the CPU has.

    Args:
        flags: ``/proc/cpuinfo``'s space-separated ``flags`` line; read from the machine when None.
    """
    present = set((_cpuinfo().get("flags", "") if flags is None else flags).split())
    return [name for flag, name in _EXTENSIONS.items() if flag in present]


def load_average() -> tuple[float, float, float] | None:
    """Runnable processes averaged over 1, 5 and 15 minutes (None where the OS does not say)."""
    try:
        return os.getloadavg()
    except OSError:
        return None


def describe_cpu() -> str:
    """One line for a figure's caption: name, extensions, the kernels PyTorch picked, cores.

    e.g. ``"Intel(R) Xeon(R) Processor (AVX2, AVX-512, VNNI, AVX512-BF16, AMX; torch kernels
    AVX512), 2 CPUs"``. ``ATEN_CPU_CAPABILITY=avx2`` makes PyTorch pick AVX2 kernels on an
    AVX-512 CPU; the line then says so.
    """
    import torch

    extensions = ", ".join(cpu_extensions()) or "no AVX2"
    kernels = torch.backends.cpu.get_cpu_capability()
    return f"{cpu_name()} ({extensions}; torch kernels {kernels}), {os.cpu_count()} CPUs"


def cpu_label(name: str | None = None, extensions: list[str] | None = None) -> str:
    """A short label for a table cell, e.g. ``"Intel Xeon (AVX-512, VNNI, AMX)"``, ``"AMD EPYC 7B13 (AVX2)"``.

    The name loses its trademarks and "Processor" / "CPU @ ..." tail; of the extensions, AVX2
    is implied by AVX-512 and AVX512-BF16 by AMX.
    """
    name = cpu_name() if name is None else name
    extensions = cpu_extensions() if extensions is None else extensions
    for noise in ("(R)", "(TM)", "(tm)"):
        name = name.replace(noise, "")
    name = " ".join(word for word in name.split(" CPU @")[0].split() if word not in ("Processor", "CPU"))
    implied = {"AVX2"} if "AVX-512" in extensions else set()
    implied |= {"AVX512-BF16"} if "AMX" in extensions else set()
    shown = [e for e in extensions if e not in implied]
    return f"{name} ({', '.join(shown)})" if shown else name
