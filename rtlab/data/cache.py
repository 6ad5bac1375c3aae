"""The prepared-data cache: one directory per prepared corpus, with a manifest, built atomically.

Layout: `<data_dir>/<dataset>/<variant>/` holds the outputs (e.g. `train.bin`, `val.bin`,
`vocab.json`) and `manifest.json` (source, sha256 and size of inputs and outputs, tokenizer,
rtlab version, timing).

- Built in a temporary sibling directory, then renamed into place: a crash leaves no half cache.
- Every load checks each output's size and sha256 against the manifest; a mismatch (corrupt or
  partial cache) is logged and the corpus is rebuilt, never used. Files over 1 GiB (OpenWebText)
  are hashed in full once; later loads compare size and mtime with that check's record in
  `verified.json` (a file rewritten in place changes its mtime; silent bit rot would not).
- Preparation holds an exclusive `fcntl` lock on `<variant>.lock`, so two processes preparing the
  same corpus build it once; the second waits, then verifies and uses the first one's result.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import rtlab
from rtlab.data.base import DataError
from rtlab.data.sources import sha256_bytes, sha256_file

log = logging.getLogger("rtlab.data")

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
VERIFIED = "verified.json"  # {name: [bytes, mtime_ns]} of large outputs whose hash was checked
FULL_HASH_LIMIT = 1 << 30


def default_data_dir() -> Path:
    env = os.environ.get("RTLAB_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rtlab" / "data"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def describe_outputs(directory: Path) -> dict[str, dict[str, Any]]:
    """{file name: {sha256, bytes}} for every file in a prepared directory except the manifest."""
    return {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name not in (MANIFEST, VERIFIED)
    }


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _read_verified(directory: Path) -> dict[str, list[int]]:
    try:
        return json.loads((directory / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}


def _record_verified(directory: Path, names: list[str]) -> None:
    """Remember large outputs whose full hash was just checked (best effort)."""
    record = _read_verified(directory)
    record.update({name: _stamp(directory / name) for name in names})
    tmp = directory / f".{VERIFIED}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, directory / VERIFIED)
    except OSError:
        pass


def outputs_fingerprint(outputs: dict[str, dict[str, Any]], identity: dict[str, Any]) -> str:
    """sha256 of the output hashes and what they mean (options, tokenizer); stable across builds."""
    hashes = {name: info["sha256"] for name, info in outputs.items()}
    return sha256_bytes(canonical_json({"outputs": hashes, "identity": identity}).encode())


def verify(directory: Path) -> tuple[dict[str, Any] | None, str]:
    """(manifest, '') if the prepared directory is intact, else (None, why not)."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return None, "no manifest" if directory.exists() else "not prepared"
    try:
        manifest = json.loads(manifest_path.read_text())
        outputs = manifest["outputs"]
        identity = manifest["identity"]
    except (ValueError, KeyError, TypeError) as err:
        return None, f"unreadable manifest ({err})"
    if manifest.get("format") != MANIFEST_FORMAT:
        return None, f"manifest format {manifest.get('format')} != {MANIFEST_FORMAT}"
    verified = _read_verified(directory)
    newly_verified = []
    for name, info in outputs.items():
        path = directory / name
        if not path.is_file():
            return None, f"{name} is missing"
        if path.stat().st_size != info["bytes"]:
            return None, f"{name} has {path.stat().st_size} bytes, manifest says {info['bytes']}"
        if info["bytes"] > FULL_HASH_LIMIT and verified.get(name) == _stamp(path):
            continue
        if sha256_file(path) != info["sha256"]:
            return None, f"{name} does not match its sha256 in the manifest"
        if info["bytes"] > FULL_HASH_LIMIT:
            newly_verified.append(name)
    if newly_verified:
        _record_verified(directory, newly_verified)
    if manifest.get("fingerprint") != outputs_fingerprint(outputs, identity):
        return None, "manifest fingerprint does not match its outputs"
    return manifest, ""


Builder = Callable[[Path], dict[str, Any]]


def ensure_prepared(
    directory: Path, identity: dict[str, Any], build: Builder, force: bool = False
) -> dict[str, Any]:
    """Return the manifest of an intact prepared directory, building it first when needed.

    `identity` says what the outputs are (dataset, options, tokenizer): it is stored in the manifest
    and enters the fingerprint. `build(tmp_dir)` writes the outputs into tmp_dir and returns the
    manifest's other fields (source, inputs, sizes, tokenizer).
    """
    if not force:
        manifest, _ = verify(directory)
        if manifest is not None and manifest["identity"] == identity:
            return manifest
    with file_lock(directory.with_name(directory.name + ".lock")):
        manifest, why = verify(directory)
        if manifest is not None and manifest["identity"] != identity:
            manifest, why = None, "manifest identity differs from the requested options"
        if manifest is not None and not force:
            return manifest  # another process prepared it while we waited for the lock
        if directory.exists():
            if not force:
                log.warning("rebuilding %s: %s", directory, why)
            trash = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.old-"))
            os.replace(directory, trash / directory.name)
            shutil.rmtree(trash, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
        try:
            start = time.perf_counter()
            fields = build(tmp)
            outputs = describe_outputs(tmp)
            manifest = {
                "format": MANIFEST_FORMAT,
                "identity": identity,
                **fields,
                "outputs": outputs,
                "fingerprint": outputs_fingerprint(outputs, identity),
                "rtlab_version": rtlab.__version__,
                "python": platform.python_version(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "build_id": uuid.uuid4().hex,  # tells two builds of identical outputs apart
                "prepare_seconds": round(time.perf_counter() - start, 3),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            for path in tmp.iterdir():  # durable before the rename makes it visible
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return manifest


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read ({err})") from err
