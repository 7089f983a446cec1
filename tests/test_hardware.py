"""The CPU's name and extensions, as figures and bug reports name them."""

import subprocess
import sys

from multibox.hardware import cpu_extensions, cpu_label, describe_cpu

# /proc/cpuinfo flags (abridged) of the two kinds of machine this project runs on
EPYC = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni clzero"
XEON = "sse2 avx f16c avx2 avx512f avx512dq avx512bw avx_vnni avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8"


def test_extensions_are_read_from_the_flags():
    assert cpu_extensions(EPYC) == ["AVX2"]
    assert cpu_extensions(XEON) == ["AVX2", "AVX-512", "VNNI", "AVX512-BF16", "AMX"]
    assert cpu_extensions("sse2 avx") == []


def test_labels_are_short_and_keep_what_sets_the_speed():
    assert cpu_label("AMD EPYC 7B13 64-Core Processor", ["AVX2"]) == "AMD EPYC 7B13 64-Core (AVX2)"
    assert cpu_label("Intel(R) Xeon(R) Processor", cpu_extensions(XEON)) == "Intel Xeon (AVX-512, VNNI, AMX)"
    assert cpu_label("Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz", []) == "Intel Core i7-8650U"


def test_the_description_names_the_kernels_pytorch_picked():
    # ATEN_CPU_CAPABILITY=avx2 makes PyTorch choose AVX2 kernels on any CPU that has AVX2
    code = "from multibox.hardware import describe_cpu; print(describe_cpu())"
    env = {"ATEN_CPU_CAPABILITY": "default", "PATH": ""}
    line = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "torch kernels DEFAULT" in line
    assert describe_cpu().endswith("CPUs")
