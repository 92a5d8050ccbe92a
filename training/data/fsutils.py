"""File-system helpers: the user cache folder, an inter-process lock, and the project's one way of
writing a file atomically (a temporary file in the same folder, flushed to disk, then renamed over the
target: readers see the old file or the new one, never half of one)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

CACHE_ENV = "STYLEPAIR_CACHE_DIR"


def user_cache_root() -> Path:
    """``$STYLEPAIR_CACHE_DIR``, else ``$XDG_CACHE_HOME/stylepair``, else ``~/.cache/stylepair``.

    When the home cache cannot be created or written (read-only home in CI), falls back to
    ``<tmp>/stylepair-<uid>``; an explicit ``$STYLEPAIR_CACHE_DIR`` is always used as given.
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "stylepair"
    try:
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"stylepair-{os.getuid()}"


def default_cache_location(root: Path, cache_dir: str | Path | None = None) -> Path:
    """Where derived files of the dataset at ``root`` go (slice caches, voxel-check records).

    First that applies: ``cache_dir``; ``$STYLEPAIR_CACHE_DIR/slices/``; ``<root>/.stylepair_cache/``
    when ``root`` is writable; ``~/.cache/stylepair/slices/``.
    """
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return user_cache_root() / "slices"
    if os.access(root, os.W_OK):
        return Path(root) / ".stylepair_cache"
    return user_cache_root() / "slices"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created if needed) for the ``with`` block.

    Blocks until other processes holding it finish; the kernel releases it if a holder dies.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def atomic_write(path: Path, write: Callable[[Path], None], temporary: Path | None = None) -> Path:
    """Make ``path`` with ``write(temporary_path)``, then fsync and rename it into place; returns ``path``.

    temporary: the temporary file's name (default: a fresh hidden name in the same folder that keeps the
    file ending, for writers that infer the format from it); removed if ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if temporary is None:
        ending = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{ending}")
        os.close(fd)
        temporary = Path(name)
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path


def atomic_write_bytes(path: Path, data: bytes, temporary: Path | None = None) -> Path:
    """`atomic_write` of ``data``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), temporary)


def atomic_write_text(path: Path, text: str) -> Path:
    """`atomic_write` of ``text`` (UTF-8, newlines as given)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: object) -> Path:
    """`atomic_write_text` of ``json.dumps(obj, indent=2)``."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def build_folder(out_dir: str | Path, fill: Callable[[Path], None]) -> Path:
    """Make the folder ``out_dir`` whole or not at all: ``fill(temporary)`` writes into a folder beside
    it, which is then renamed into place (an empty ``out_dir`` is replaced; a non-empty one is never
    touched: FileExistsError).  Returns ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: folder exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
