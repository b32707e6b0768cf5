"""Builds bertrt's native extensions with CMake: bertrt._C (CPU) and, when nvcc exists, bertrt._cuda.

Packages are mapped in pyproject.toml (``bertrt`` -> engine/, ``bertrt.kernels`` -> kernels/). Set
BERTRT_BUILD_CUDA=0 to skip the CUDA module, BERTRT_CUDA_ARCHS to override "75;80;86;89;90".
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, target: str):
        super().__init__(name, sources=[])
        self.target = target


def find_nvcc() -> str | None:
    if os.environ.get("BERTRT_BUILD_CUDA", "1") == "0":
        return None
    nvcc = shutil.which("nvcc")
    if nvcc is None and Path("/usr/local/cuda/bin/nvcc").exists():
        nvcc = "/usr/local/cuda/bin/nvcc"
    return nvcc


class CMakeBuild(build_ext):
    def build_extensions(self):
        import pybind11

        nvcc = NVCC
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        out_dir = Path(self.get_ext_fullpath(self.extensions[0].name)).resolve().parent
        out_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DBERTRT_BUILD_CUDA={'ON' if nvcc else 'OFF'}",
        ]
        if nvcc:
            args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
            if os.environ.get("BERTRT_CUDA_ARCHS"):
                args.append(f"-DBERTRT_CUDA_ARCHS={os.environ['BERTRT_CUDA_ARCHS']}")
        else:
            print("bertrt: nvcc not found, building without the CUDA extension bertrt._cuda")
        subprocess.check_call(args)
        targets = [ext.target for ext in self.extensions]
        jobs = str(os.cpu_count() or 2)
        subprocess.check_call(["cmake", "--build", str(build_dir), "--target", *targets, "-j", jobs])


NVCC = find_nvcc()
EXTENSIONS = [CMakeExtension("bertrt._C", "_C")]
if NVCC:
    EXTENSIONS.append(CMakeExtension("bertrt._cuda", "_cuda"))

setup(
    packages=["bertrt", *[f"bertrt.{p}" for p in find_packages("engine")], "bertrt.kernels"],
    ext_modules=EXTENSIONS,
    cmdclass={"build_ext": CMakeBuild},
    package_data={"bertrt": ["py.typed"]},
)
