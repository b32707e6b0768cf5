"""Where ``bertrt tune`` stores its winners, and how the policy reads them back.

One JSON record per (device fingerprint, model, task): cache_dir()/tune/<fingerprint>/<model hash>-<task>.json,
written through ``cache.write_record`` (schema version, checksum) with the package versions that made
it. A corrupt or stale record is ignored by ``lookup`` (with a log line) and re-measured by ``tune``.
The measuring side is ``runtime/tune.py``; this module only names and reads records.
"""

from __future__ import annotations

from pathlib import Path

from .. import hardware
from .._version import __version__
from ..model.config import EncoderConfig
from . import cache

_VERSIONED = ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "openvino", "tensorrt")


def versions() -> dict[str, str]:
    found = {name: hardware.package_version(name) for name in _VERSIONED}
    return {"bertrt": __version__, **{k: v for k, v in found.items() if v}}


def result_path(fingerprint: str, digest: str, task: str) -> Path:
    return cache.cache_dir() / "tune" / fingerprint / f"{digest}-{task}.json"


def identity(model_dir: Path, device: str, task: str | None) -> tuple[str, str, str, dict]:
    """(device fingerprint, model hash, task, the fields a stored record must match)."""
    task = task or EncoderConfig.from_file(Path(model_dir) / "config.json").task
    fingerprint = hardware.fingerprint(device)
    digest = cache.model_hash(model_dir)
    expect = {"fingerprint": fingerprint, "model_hash": digest, "task": task, "versions": versions()}
    return fingerprint, digest, task, expect


def lookup(model_dir: str | Path, device: str, task: str | None = None, bucket: str = "overall"):
    """(backend, precision, detail) stored by ``tune`` for this device, model, task and bucket, or
    None (no result; a corrupt or stale result is logged and ignored)."""
    fingerprint, digest, task, expect = identity(Path(model_dir), device, task)
    record = cache.read_record(result_path(fingerprint, digest, task), expect)
    if record is None:
        return None
    winner = record.get("winners", {}).get(bucket)
    if not winner:
        return None
    return winner["backend"], winner["precision"], winner["detail"]
