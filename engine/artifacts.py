"""Integrity of cached artefacts (exported ONNX files, TensorRT engines): size and sha256 recorded
when they are written, checked before they are used.

A manifest ``{"files": {NAME: {"size": BYTES, "sha256": HEX, "mtime_ns": NS}}}`` lists files of one
folder. :func:`verify` re-hashes a file only when its size or modification time differ from the
record (a rewrite, a truncation, a copy); a truncated or zero-byte file fails on size alone.
A cache that fails is rebuilt by its owner, which prints one :func:`warn_rebuild` line.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path

MANIFEST_VERSION = 1


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def _record(path: Path) -> dict[str, int | str]:
    st = path.stat()
    return {"size": st.st_size, "sha256": sha256_file(path), "mtime_ns": st.st_mtime_ns}


def write_manifest(manifest: Path, files: Iterable[Path]) -> Path:
    """Record size, sha256 and mtime of ``files`` (all in ``manifest``'s folder) in ``manifest``."""
    manifest = Path(manifest)
    entries = {Path(f).name: _record(Path(f)) for f in files}
    tmp = manifest.with_name(manifest.name + ".tmp")
    tmp.write_text(json.dumps({"manifest_version": MANIFEST_VERSION, "files": entries}, indent=2))
    tmp.replace(manifest)
    return manifest


def verify(manifest: Path, names: Iterable[str] | None = None) -> str | None:
    """None when every file recorded in ``manifest`` (or each of ``names``) is intact, else why not."""
    manifest = Path(manifest)
    try:
        data = json.loads(manifest.read_text())
        files = data["files"]
        if not isinstance(files, dict):
            raise TypeError
    except FileNotFoundError:
        return f"no manifest {manifest.name} (size and hash were never recorded)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"manifest {manifest} is unreadable"
    for name in names if names is not None else list(files):
        rec = files.get(name)
        path = manifest.parent / name
        if not isinstance(rec, dict):
            return f"{name} is not recorded in {manifest.name}"
        if not path.is_file():
            return f"{path} is missing"
        st = path.stat()
        if st.st_size != rec.get("size"):
            return f"{path} is {st.st_size} bytes, {rec.get('size')} were written (truncated or replaced)"
        if st.st_mtime_ns != rec.get("mtime_ns") and sha256_file(path) != rec.get("sha256"):
            return f"{path} does not match its recorded sha256 (changed since it was written)"
    return None


def warn_rebuild(what: str, reason: str) -> None:
    """The one line said when a cached artefact fails verification and is rebuilt."""
    print(f"arsel: warning: {what} failed verification ({reason}); rebuilding it", file=sys.stderr)
