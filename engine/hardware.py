"""What this machine is: CPU model, instruction sets and cores, GPUs (name, compute capability, memory).

The hardware facts every layer may read (ops, the runtime policy, the backends, bench); nothing
here imports another bertrt module. ``bertrt.runtime.probe`` reports what runs on top of them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
from dataclasses import dataclass, field

import torch

CPU_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    cores: int
    flags: frozenset[str] = field(default_factory=frozenset)

    def has(self, feature: str) -> bool:
        return feature in self.flags

    @property
    def native_bf16(self) -> bool:
        """BF16 GEMMs run on hardware (AMX or AVX512-BF16), which makes BF16 the fast precision."""
        return self.has("amx_bf16") or self.has("avx512_bf16")

    @property
    def isa(self) -> str:
        """Best ISA tier, the same names as the C++ dispatch: amx > avx512 > avx2 > scalar."""
        if self.has("amx_tile") and self.has("amx_bf16"):
            return "amx"
        if self.has("avx512f") and self.has("avx512bw") and self.has("avx512vl"):
            return "avx512"
        if self.has("avx2") and self.has("fma"):
            return "avx2"
        return "scalar"


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    capability: tuple[int, int]
    memory_gib: float
    driver: str = ""

    @property
    def sm(self) -> int:
        return self.capability[0] * 10 + self.capability[1]


def read_cpu(cpuinfo_path: str = "/proc/cpuinfo") -> CpuInfo:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open(cpuinfo_path) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return CpuInfo(model=model, cores=len(os.sched_getaffinity(0)), flags=frozenset(f for f in flags
                                                                                      if f in CPU_FEATURES))


def read_gpus() -> list[GpuInfo]:
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append(GpuInfo(i, props.name, (props.major, props.minor), props.total_memory / 2**30, driver_version()))
    return gpus


def driver_version() -> str:
    """The NVIDIA kernel driver version, from /proc (empty when unknown)."""
    try:
        with open("/proc/driver/nvidia/version") as handle:
            words = handle.readline().split()
    except OSError:
        return ""
    return next((w for w in words if w[:1].isdigit() and "." in w), "")


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def fingerprint(device: str = "cpu", cpu_info: CpuInfo | None = None, gpu: GpuInfo | None = None) -> str:
    """A stable name for the hardware a measurement was taken on: "cpu-<hash>" from the CPU model,
    its ISA flags and the cores bertrt may use; "gpu-<hash>" from GPU name, compute capability,
    memory and driver. Tune results are stored under it."""
    if torch.device(device).type == "cuda":
        if gpu is None:
            gpu = gpus()[torch.device(device).index or 0]
        text = f"{gpu.name}|sm{gpu.sm}|{round(gpu.memory_gib)}GiB|driver {gpu.driver}"
        kind = "gpu"
    else:
        c = cpu_info or cpu()
        text = f"{c.model}|{','.join(sorted(c.flags))}|{c.cores} cores"
        kind = "cpu"
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@functools.cache
def cpu() -> CpuInfo:
    return read_cpu()


@functools.cache
def gpus() -> tuple[GpuInfo, ...]:
    return tuple(read_gpus())
