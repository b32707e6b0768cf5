"""Static checks of the built CUDA extension bertrt._cuda; no GPU needed.

* the module imports without a GPU and reports that none is present instead of crashing;
* it holds SASS for every target architecture (75, 80, 86, 89, 90, or $BERTRT_CUDA_ARCHS), read from the
  ELF's .nv_fatbin section by csrc/cuda/cuda_inspect.py (cross-checked with cuobjdump when one is on PATH);
* ptxas reports zero spill stores and zero spill loads for every kernel on every architecture. The
  report is the _cuda.ptxas.log written beside the module at build time; if it is missing or older than
  the module, the .cu files are recompiled here with the build's flags to get it.

Skipped, with the reason, only when nvcc is absent (then the module is not built at all).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc" / "cuda"
EXPECTED_ARCHS = sorted(int(a) for a in os.environ.get("BERTRT_CUDA_ARCHS", "75;80;86;89;90").split(";") if a)
KERNELS = (
    "attention_mma_kernel", "attention_simt_kernel", "bias_gelu_kernel", "bias_residual_layer_norm_kernel",
    "embedding_layer_norm_kernel", "gated_gelu_kernel",
)

_spec = importlib.util.spec_from_file_location("cuda_inspect", ROOT / "csrc" / "cuda" / "cuda_inspect.py")
cuda_inspect = importlib.util.module_from_spec(_spec)
sys.modules["cuda_inspect"] = cuda_inspect
_spec.loader.exec_module(cuda_inspect)


def find_nvcc() -> str | None:
    nvcc = shutil.which("nvcc")
    if nvcc is None and Path("/usr/local/cuda/bin/nvcc").exists():
        nvcc = "/usr/local/cuda/bin/nvcc"
    return nvcc


NVCC = find_nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found: bertrt._cuda is not built on this machine")


@pytest.fixture(scope="module")
def module():
    try:
        import bertrt._cuda as m
    except ImportError as exc:
        pytest.fail(f"nvcc exists ({NVCC}) but bertrt._cuda does not import: {exc}. Build it: pip install -e .")
    return m


# --- the readers themselves, on synthetic input (run everywhere) ---------------------------------


def _fake_fatbin(entries: list[tuple[int, int]]) -> bytes:
    body = b""
    for kind, arch in entries:
        payload = b"x" * 24
        header = struct.pack("<HHIQ", kind, 0x0101, 64, len(payload)) + b"\0" * 12 + struct.pack("<I", arch)
        body += header + b"\0" * (64 - len(header)) + payload
    return struct.pack("<IHHQ", cuda_inspect.FATBIN_MAGIC, 1, 16, len(body)) + body


def test_fatbin_reader_on_synthetic_fatbins():
    blob = _fake_fatbin([(2, 75), (2, 80), (1, 90)]) + b"\0" * 8 + _fake_fatbin([(2, 86)])
    entries = cuda_inspect.fatbin_entries(blob)
    assert [(e.kind, e.arch) for e in entries] == [("sass", 75), ("sass", 80), ("ptx", 90), ("sass", 86)]


def test_ptxas_parser_reads_spills_and_registers():
    text = """## attention.cu.o.ptxas.log
ptxas info    : Compiling entry function '_Z3fooILi4EEvv' for 'sm_80'
ptxas info    : Function properties for _Z3fooILi4EEvv
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 16 bytes cumulative stack size
ptxas info    : Compiling entry function '_Z3fooILi4EEvv' for 'sm_90'
ptxas info    : Function properties for _Z3fooILi4EEvv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers
"""
    usages = {u.arch: u for u in cuda_inspect.parse_ptxas(text)}
    assert (usages[80].registers, usages[80].spill_stores, usages[80].spill_loads) == (64, 8, 4)
    assert (usages[90].registers, usages[90].spill_stores, usages[90].spill_loads) == (40, 0, 0)
    assert usages[80].source == "attention.cu.o.ptxas.log"


# --- the built module ------------------------------------------------------------------------------


@needs_nvcc
def test_module_imports_and_reports_devices(module):
    count = module.device_count()
    status = module.device_status()
    assert isinstance(count, int) and count >= 0
    assert isinstance(status, str) and status
    if count == 0:
        assert status.startswith("no CUDA device present: "), status
    assert sorted(module.compiled_archs) == EXPECTED_ARCHS


@needs_nvcc
def test_no_visible_device_is_reported_not_raised(module):
    """With every device hidden the module still imports, counts 0 and says why."""
    code = "import bertrt._cuda as m; print(m.device_count()); print(m.device_status())"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    count, status = done.stdout.splitlines()[:2]
    assert count == "0"
    assert status.startswith("no CUDA device present: "), status


@needs_nvcc
def test_cuda_runtime_is_linked_statically(module):
    needed = cuda_inspect.needed_libraries(module.__file__)
    assert not [lib for lib in needed if lib.startswith(("libcudart", "libcuda."))], needed


@needs_nvcc
def test_sass_for_every_architecture(module):
    archs = cuda_inspect.embedded_archs(module.__file__)
    missing = sorted(set(EXPECTED_ARCHS) - archs["sass"])
    assert not missing, f"{module.__file__} lacks SASS for sm_{missing}; it holds {archs}"
    assert max(EXPECTED_ARCHS) in archs["ptx"], f"no PTX for compute_{max(EXPECTED_ARCHS)} (forward compatibility)"


def _find_cuobjdump() -> str | None:
    """cuobjdump on PATH, else the one installed by PyPI's nvidia-cuda-cuobjdump (nvidia/cu13/bin/)."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        dist = importlib.metadata.distribution("nvidia-cuda-cuobjdump")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if f.name == "cuobjdump" and f.parent.name == "bin":
            path = Path(dist.locate_file(f))
            if path.exists():
                if not os.access(path, os.X_OK):
                    return None
                return str(path)
    return None


@needs_nvcc
def test_sass_list_agrees_with_cuobjdump(module):
    cuobjdump = _find_cuobjdump()
    if cuobjdump is None:
        pytest.skip("cuobjdump not installed (PyPI nvidia-cuda-cuobjdump); the built-in fatbin reader is used alone")
    done = subprocess.run([cuobjdump, "--list-elf", module.__file__], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listed = {int(tok[3:].rstrip("a")) for line in done.stdout.splitlines() for tok in line.replace(".", " ").split()
              if tok.startswith("sm_") and tok[3:].rstrip("a").isdigit()}
    assert listed == cuda_inspect.embedded_archs(module.__file__)["sass"]


@needs_nvcc
def test_no_local_memory_per_cuobjdump(module):
    """Independent of the ptxas log: no kernel in the binary uses local memory (spills would)."""
    cuobjdump = _find_cuobjdump()
    if cuobjdump is None:
        pytest.skip("cuobjdump not installed (PyPI nvidia-cuda-cuobjdump); the ptxas report is checked alone")
    done = subprocess.run([cuobjdump, "-res-usage", module.__file__], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    functions = local = 0
    offenders = []
    arch = "?"
    lines = done.stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("arch = "):
            arch = line.split("=", 1)[1].strip()
        m = re.search(r"LOCAL:(\d+)", line)
        if m:
            functions += 1
            local = int(m.group(1))
            if local:
                offenders.append(f"{arch} {lines[i - 1].strip()} LOCAL:{local}")
    assert functions, done.stdout[:2000]
    assert not offenders, "\n".join(offenders)


def _recompile_ptxas_report(archs: list[int]) -> str:
    """ptxas -v for every .cu, compiled as the build does (C++17, -O3) for ``archs``."""
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    with tempfile.TemporaryDirectory() as tmp:

        def compile_one(src: Path) -> str:
            cmd = [NVCC, "-std=c++17", "-O3", "-Xptxas=-v", "-I", str(CSRC), "-I", str(CSRC.parent), *gencode,
                   "-c", str(src), "-o", str(Path(tmp) / f"{src.name}.o")]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
            return f"## {src.name}.o.ptxas.log\n{done.stdout}\n{done.stderr}\n"

        with ThreadPoolExecutor(max_workers=2) as pool:
            return "".join(pool.map(compile_one, sorted(CSRC.glob("*.cu"))))


@pytest.fixture(scope="module")
def ptxas_report(module) -> tuple[str, str]:
    so = Path(module.__file__)
    log = so.with_name("_cuda.ptxas.log")
    if log.exists() and log.stat().st_mtime >= so.stat().st_mtime - 1:
        return log.read_text(), str(log)
    return _recompile_ptxas_report(EXPECTED_ARCHS), "recompiled in a temporary directory"


@needs_nvcc
def test_every_kernel_compiled_for_every_architecture(ptxas_report):
    text, origin = ptxas_report
    usages = cuda_inspect.parse_ptxas(text)
    for arch in EXPECTED_ARCHS:
        names = {cuda_inspect.demangle_short(u.function).split("<")[0] for u in usages if u.arch == arch}
        missing = [k for k in KERNELS if k not in names]
        assert not missing, f"sm_{arch}: no ptxas report for {missing} ({origin})"


@needs_nvcc
def test_zero_register_spills(ptxas_report):
    text, origin = ptxas_report
    usages = cuda_inspect.parse_ptxas(text)
    assert usages, f"no kernels in the ptxas report ({origin})"
    unparsed = [u for u in usages if u.spill_stores is None or u.spill_loads is None]
    assert not unparsed, f"no spill line for {[u.function for u in unparsed]} ({origin})"
    spilled = [u for u in usages if u.spill_stores or u.spill_loads]
    assert not spilled, f"register spills ({origin}):\n" + cuda_inspect.table(spilled)
