"""Optional extras (``pip install 'arsel[EXTRA]'``): what each adds, and one error for a missing one.

A verb that needs an extra calls :func:`require` at its start, before any slow work::

    rerun = require("viz", "rerun", what="the Rerun view")

which returns the imported module or raises :class:`MissingExtraError` (an ``ImportError``, so the
CLI prints it as one line with exit status 2) naming the extra and the install line. The extras'
distributions are read from this checkout's ``pyproject.toml`` when the package runs from a source
tree, else from the installed package's metadata (``Requires-Dist: ...; extra == "viz"``).
Standard library only (``packaging`` is used when present, for version checks).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtraError", "Requirement", "extra_requirements", "install_line", "require",
           "requirement_status"]

DIST_NAME = "arsel"

# Extra -> (what it is for, the modules a verb imports from it; the first is require()'s default).
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "serve": ("`arsel serve`: ASGI app, WebSocket transport, arsel.v1 schema checks",
              ("fastapi", "uvicorn", "websockets", "jsonschema")),
    "ray": ("scale-out: Ray Serve encoder deployments, Triton client", ("ray", "tritonclient.grpc")),
    "viz": ("remote 3D views: Rerun, viser", ("rerun", "viser")),
    "gaze": ("live gaze from a Pupil Labs Neon/Invisible", ("pupil_labs.realtime_api",)),
    "trt": ("TensorRT engines (NVIDIA GPU)", ("tensorrt",)),
    "test": ("the test suite and its reference implementations", ("pytest",)),
}


class MissingExtraError(ImportError):
    """A module of an optional extra is not importable; the message names the install line."""


def install_line(extra: str) -> str:
    """``pip install 'arsel[EXTRA]'`` (quoted: brackets are globs in zsh)."""
    return f"pip install '{DIST_NAME}[{extra}]'"


def require(extra: str, module: str | None = None, what: str | None = None) -> ModuleType:
    """Import ``module`` (default: the extra's first module) or raise :class:`MissingExtraError`.

    ``what`` names the feature in the message (default: the extra's use).
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known extras: {', '.join(EXTRAS)}")
    use, modules = EXTRAS[extra]
    name = module or modules[0]
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingExtraError(
            f"{what or use} needs the {extra} extra: {install_line(extra)} ({name} is not importable: {exc})"
        ) from exc


@dataclass(frozen=True)
class Requirement:
    """One ``Requires-Dist`` line of an extra: distribution name and version specifier (may be empty)."""

    name: str
    specifier: str
    extras: tuple[str, ...] = ()


_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*?)\s*(?:;(.*))?$")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def _parse(line: str) -> tuple[Requirement, str | None] | None:
    """``"rerun-sdk>=0.23; extra == 'viz'"`` -> (Requirement, "viz"); None for an unparsable line."""
    m = _REQ.match(line)
    if m is None:
        return None
    extras = tuple(e.strip() for e in (m.group(2) or "[]")[1:-1].split(",") if e.strip())
    marker = _EXTRA_MARKER.search(m.group(4) or "")
    return Requirement(m.group(1), m.group(3).replace(" ", ""), extras), marker.group(1) if marker else None


def _source_pyproject() -> Path | None:
    """``pyproject.toml`` of the source tree this package was imported from, if it is arsel's."""
    candidate = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if not candidate.is_file():
        return None
    text = candidate.read_text(encoding="utf-8")
    return candidate if re.search(rf'^name\s*=\s*"{DIST_NAME}"', text, re.MULTILINE) else None


def _requires_lines() -> tuple[list[tuple[str, str | None]], str]:
    """(requirement line, extra or None) pairs and where they were read from."""
    pyproject = _source_pyproject()
    if pyproject is not None and sys.version_info >= (3, 11):
        import tomllib

        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
        lines = [(req, None) for req in project.get("dependencies", [])]
        for extra, reqs in project.get("optional-dependencies", {}).items():
            lines += [(req, extra) for req in reqs]
        return lines, str(pyproject)
    try:
        raw = importlib.metadata.requires(DIST_NAME) or []
    except importlib.metadata.PackageNotFoundError:
        return [], f"no {DIST_NAME} metadata (not installed) and no source pyproject.toml"
    out: list[tuple[str, str | None]] = []
    for line in raw:
        parsed = _parse(line)
        if parsed is not None:
            out.append((line.split(";")[0], parsed[1]))
    return out, f"{DIST_NAME} {importlib.metadata.version(DIST_NAME)} package metadata"


def extra_requirements() -> tuple[dict[str, list[Requirement]], str]:
    """``{extra: [Requirement, ...]}`` (``""`` = the base dependencies) and where they came from.

    A self-reference (``arsel[viz]`` inside ``test``) is expanded into that extra's requirements.
    """
    lines, origin = _requires_lines()
    table: dict[str, list[Requirement]] = {}
    for line, extra in lines:
        parsed = _parse(line)
        if parsed is not None:
            table.setdefault(extra or "", []).append(parsed[0])
    for extra, reqs in table.items():
        expanded: list[Requirement] = []
        for req in reqs:
            if req.name.lower() == DIST_NAME:
                expanded += [r for sub in req.extras for r in table.get(sub, []) if r not in expanded]
            elif req not in expanded:
                expanded.append(req)
        table[extra] = expanded
    return table, origin


def installed_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None (tests monkeypatch this lookup)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def requirement_status(req: Requirement) -> tuple[str | None, bool]:
    """(installed version or None, whether it satisfies ``req.specifier``)."""
    version = installed_version(req.name)
    if version is None or not req.specifier:
        return version, version is not None
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # no packaging: presence is all we can check
        return version, True
    return version, SpecifierSet(req.specifier).contains(version, prereleases=True)
