"""Self-healing caches: exported ONNX folders and TensorRT engines are verified against the size
and sha256 recorded when they were written, and rebuilt with one warning line when they fail."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.artifacts import verify, write_manifest
from trt.build import DecoderProfile, EngineKey, engine_status, write_sidecar

KEY = EngineKey("ab" * 32, "10.3.0", "NVIDIA H100 80GB HBM3", "fp16", DecoderProfile().tag)


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zero-byte":
        path.write_bytes(b"")
    else:  # same size, one byte changed, mtime moved on
        path.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


@pytest.mark.parametrize("how,words", [("truncated", "truncated"), ("zero-byte", "0 bytes"),
                                       ("hash", "sha256")])
def test_manifest_catches_every_kind_of_damage(tmp_path: Path, how: str, words: str) -> None:
    files = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    for i, f in enumerate(files):
        f.write_bytes(bytes(range(256)) * (i + 3))
    write_manifest(tmp_path / "manifest.json", files)
    assert verify(tmp_path / "manifest.json") is None
    _damage(files[1], how)
    reason = verify(tmp_path / "manifest.json")
    assert reason is not None and words in reason and "b.onnx" in reason


def test_missing_or_broken_manifest_fails(tmp_path: Path) -> None:
    assert "no manifest" in verify(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_text("{not json")
    assert "unreadable" in verify(tmp_path / "manifest.json")


@pytest.mark.parametrize("how", ["truncated", "zero-byte", "hash"])
def test_damaged_engine_is_corrupt(tmp_path: Path, how: str) -> None:
    path = tmp_path / KEY.file_name("lite_medsam_decoder")
    path.write_bytes(b"plan" * 1000)
    write_sidecar(path, KEY, tmp_path / "d.onnx", build_s=1.0)
    assert engine_status(path, KEY) == ("ok", "")
    _damage(path, how)
    status, reason = engine_status(path, KEY)
    assert status == "corrupt" and path.name in reason


def test_onnx_cache_heals_a_truncated_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    """A truncated cached encoder is noticed, re-exported once with one warning line, then trusted."""
    import engine.export.onnx_export as onnx_export
    from engine.backends import factory

    exports: list[Path] = []

    def fake_export(name: str, out_dir: Path, ckpt: Path, **_: object) -> None:  # the real one takes minutes
        out_dir.mkdir(parents=True)
        for part in ("encoder.onnx", "decoder.onnx", "export.json"):
            (out_dir / f"{name}_{part}").write_bytes(b"x" * 4096)
        exports.append(out_dir)

    monkeypatch.setattr(onnx_export, "export_model", fake_export)
    enc, dec = factory.onnx_files("lite_medsam", None, tmp_path)
    assert len(exports) == 1 and enc.stat().st_size == 4096 and (enc.parent / "manifest.json").is_file()
    assert not list(enc.parent.parent.glob(".*part*"))  # the temporary folder was renamed
    assert factory.onnx_files("lite_medsam", None, tmp_path) == (enc, dec) and len(exports) == 1
    capsys.readouterr()
    enc.write_bytes(enc.read_bytes()[:100])  # truncated
    assert factory.onnx_files("lite_medsam", None, tmp_path) == (enc, dec)
    err = capsys.readouterr().err
    assert len(exports) == 2 and enc.stat().st_size == 4096
    assert err.count("\n") == 1 and "failed verification" in err and "truncated" in err
    dec.write_bytes(b"")  # zero-byte
    factory.onnx_files("lite_medsam", None, tmp_path)
    assert len(exports) == 3 and dec.stat().st_size == 4096


def test_onnx_cache_without_manifest_is_exported_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.export.onnx_export as onnx_export
    from engine.backends import factory

    calls: list[Path] = []

    def fake_export(name: str, out_dir: Path, ckpt: Path, **_: object) -> None:
        out_dir.mkdir(parents=True)
        for part in ("encoder.onnx", "decoder.onnx", "export.json"):
            (out_dir / f"{name}_{part}").write_bytes(b"y" * 10)
        calls.append(out_dir)

    monkeypatch.setattr(onnx_export, "export_model", fake_export)
    enc, _ = factory.onnx_files("lite_medsam", None, tmp_path)
    (enc.parent / "manifest.json").unlink()  # a folder from before manifests, or a half-written one
    factory.onnx_files("lite_medsam", None, tmp_path)
    assert len(calls) == 2 and (enc.parent / "manifest.json").is_file()


def test_failed_export_leaves_no_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.export.onnx_export as onnx_export
    from engine.backends import factory

    def failing_export(name: str, out_dir: Path, ckpt: Path, **_: object) -> None:
        out_dir.mkdir(parents=True)
        (out_dir / f"{name}_encoder.onnx").write_bytes(b"half")
        raise RuntimeError("export failed half-way")

    monkeypatch.setattr(onnx_export, "export_model", failing_export)
    with pytest.raises(RuntimeError, match="half-way"):
        factory.onnx_files("lite_medsam", None, tmp_path)
    assert not [p for p in (tmp_path / "onnx").iterdir()]
