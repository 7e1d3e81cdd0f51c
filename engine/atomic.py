"""All-or-nothing outputs: files and folders written under temporary names beside their final
paths and renamed into place only when the whole command succeeded.

    with AtomicOutputs() as outs:
        save_mask_png(outs.file(args.out), mask)      # writes OUT's folder/.OUT.part-PID.png
        (outs.folder(args.dir) / "a.json").write_text(...)
    # success: every temporary is renamed to its final name; any exception: all are deleted,
    # and the folders created for them are removed again.

A temporary keeps its final suffix so writers that pick the format from it (OpenCV, Open3D)
still work. A folder output replaces the entries of an existing folder of that name one by one
(``masks/`` as a whole), leaving other files in it alone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import TracebackType


class AtomicOutputs:
    """Temporary names for a command's outputs; :meth:`commit` renames them, :meth:`discard` deletes them."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []  # (temporary, final)
        self._made: list[Path] = []  # folders created for the temporaries, outermost first

    def _parent(self, path: Path) -> None:
        missing = []
        parent = path.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for folder in reversed(missing):
            folder.mkdir()
            self._made.append(folder)

    def _temp(self, final: Path) -> Path:
        return final.with_name(f".{final.stem}.part-{os.getpid()}{final.suffix}")

    def file(self, final: str | Path) -> Path:
        """Temporary path to write ``final``'s content to (its folder is created if missing)."""
        final = Path(final)
        self._parent(final)
        tmp = self._temp(final)
        self._pending.append((tmp, final))
        return tmp

    def folder(self, final: str | Path) -> Path:
        """Temporary (created, empty) folder to fill in place of ``final``."""
        final = Path(final)
        self._parent(final)
        tmp = self._temp(final)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        self._pending.append((tmp, final))
        return tmp

    def commit(self) -> None:
        """Rename every temporary to its final name (folders merge into an existing folder)."""
        for tmp, final in self._pending:
            if not tmp.exists():
                continue  # registered but never written (an optional output that was skipped)
            if tmp.is_dir() and final.is_dir():
                for entry in tmp.iterdir():
                    target = final / entry.name
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    os.replace(entry, target)
                tmp.rmdir()
            else:
                os.replace(tmp, final)
        self._pending.clear()
        self._made.clear()

    def discard(self) -> None:
        """Delete every temporary and the folders created for them (when empty)."""
        for tmp, _ in self._pending:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        for folder in reversed(self._made):
            try:
                folder.rmdir()
            except OSError:
                pass
        self._pending.clear()
        self._made.clear()

    def __enter__(self) -> AtomicOutputs:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
