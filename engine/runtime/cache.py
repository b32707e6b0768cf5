"""bertrt's on-disk cache: exported ONNX files, TensorRT engines and tune results.

Layout under ``cache_dir()`` ($BERTRT_CACHE_DIR, else ~/.cache/bertrt):

    onnx/<model_hash>/<task>-<variant>.onnx   + .json sidecar (schema, checksum, versions)
    tensorrt/<engine key>.plan                + .json sidecar
    tune/<device_fingerprint>/<model_hash>.json

Every artifact has a JSON sidecar holding a schema version and the SHA-256 of the artifact; an
artifact whose sidecar is missing, unreadable, of another schema, or whose checksum does not match
is *stale or corrupt*: ``verified_artifact`` logs why and returns None, and the caller rebuilds it.
Writes go to a temporary file first and are renamed into place, so a crash never leaves a
half-written artifact behind a valid sidecar.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from ..paths import cache_dir as cache_dir  # re-exported: the cache layout below lives under it

log = logging.getLogger("bertrt.runtime")

SCHEMA_VERSION = 1
# Bytes read from each end of a weights file for the model hash: enough to cover the safetensors
# header and the first and last tensors without reading gigabytes at every load.
_SAMPLE_BYTES = 1 << 20
_MODEL_FILES = ("config.json", "modules.json", "1_Pooling/config.json", "sentence_bert_config.json",
                "tokenizer.json", "vocab.txt")
_WEIGHT_PATTERNS = ("*.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_hash(model_dir: str | Path) -> str:
    """16 hex digits identifying a checkpoint directory's content.

    Small files (config, pooling, tokenizer) are hashed whole; each weights file by name, size,
    mtime and its first and last MiB. A copied checkpoint (new mtime) hashes differently, which
    costs a rebuild, never a wrong answer.
    """
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    for name in _MODEL_FILES:
        path = model_dir / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    weights = sorted({p for pattern in _WEIGHT_PATTERNS for p in model_dir.glob(pattern)})
    for path in weights:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\0".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(_SAMPLE_BYTES))
            if stat.st_size > 2 * _SAMPLE_BYTES:
                handle.seek(-_SAMPLE_BYTES, os.SEEK_END)
                digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def canonical_checksum(record: dict) -> str:
    """SHA-256 of a JSON record without its own "checksum" field (keys sorted)."""
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(path: Path, record: dict) -> dict:
    """Write a JSON record with schema version and checksum; returns what was written."""
    record = {**record, "schema": SCHEMA_VERSION}
    record["checksum"] = canonical_checksum(record)
    atomic_write_bytes(path, json.dumps(record, indent=2, sort_keys=True).encode())
    return record


def read_record(path: Path, expect: dict | None = None) -> dict | None:
    """The record at ``path`` if it is intact, of this schema, and matches ``expect`` field by field;
    else None (logged: missing records silently, damaged or stale ones with the reason)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("cache record %s is corrupt (%s); rebuilding", path, exc)
        return None
    if not isinstance(record, dict):
        log.warning("cache record %s is corrupt (not an object); rebuilding", path)
        return None
    if record.get("schema") != SCHEMA_VERSION:
        log.warning("cache record %s is stale (schema %r, expected %d); rebuilding", path, record.get("schema"),
                    SCHEMA_VERSION)
        return None
    if record.get("checksum") != canonical_checksum(record):
        log.warning("cache record %s is corrupt (checksum mismatch); rebuilding", path)
        return None
    for key, value in (expect or {}).items():
        if record.get(key) != value:
            log.warning("cache record %s is stale (%s is %r, now %r); rebuilding", path, key, record.get(key), value)
            return None
    return record


def sidecar(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".json")


def write_artifact(artifact: Path, data: bytes, meta: dict) -> None:
    """Store an artifact and its sidecar (artifact first: a sidecar never points at missing bytes)."""
    atomic_write_bytes(artifact, data)
    write_record(sidecar(artifact), {**meta, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})


def verified_artifact(artifact: Path, expect: dict | None = None) -> Path | None:
    """``artifact`` if it and its sidecar are intact and match ``expect``; else None (logged)."""
    record = read_record(sidecar(artifact), expect)
    if record is None:
        return None
    if not artifact.is_file():
        log.warning("cached artifact %s is missing; rebuilding", artifact)
        return None
    if artifact.stat().st_size != record.get("size") or file_sha256(artifact) != record.get("sha256"):
        log.warning("cached artifact %s is corrupt (checksum mismatch); rebuilding", artifact)
        return None
    return artifact
