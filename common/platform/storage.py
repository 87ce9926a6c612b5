"""Files under the data root: safe path resolution and crash-safe writes.

Every output is written to a temporary name in the same folder, flushed, fsynced and renamed into place,
so a reader (or a crash) never sees a half-written final file. Paths stored in the database are relative
to the data root; every path that comes from outside is resolved against it and refused if it escapes.

Usage::

    path = resolve_inside(settings.data_root, "datasets/3/images/000012.png")
    atomic_write_bytes(path, png_bytes)
    atomic_save_npy(root / "datasets/3/act/chunk-000000/midblock.npy", array)
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

import numpy as np

TMP_MARK = ".tmp-"


class UnsafePath(ValueError):
    """A path that would leave the data root (``..``, absolute, encoded, or through a symlink)."""


NAME_MAX = 255  # bytes in one path component (Linux, macOS); a longer one is ENAMETOOLONG on lookup
PATH_MAX = 4096


def resolve_inside(root: Path, relative: str | os.PathLike) -> Path:
    """The real path of ``relative`` under ``root``; raises UnsafePath if it escapes ``root``.

    Percent-encoded input is decoded (repeatedly) before checking, absolute paths, backslashes and NUL
    bytes are refused, and symlinks are followed before the containment check.
    """
    text = str(relative)
    for _ in range(3):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    # a backslash is a separator on Windows (and in URLs some servers rewrite): no stored path has one
    if "\x00" in text or "\\" in text or text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise UnsafePath(f"'{relative}' is not a relative path inside the data root")
    if len(text.encode()) > PATH_MAX or any(len(part.encode()) > NAME_MAX for part in text.split("/")):
        raise UnsafePath("the path is longer than any file name here can be")
    root_real = Path(os.path.realpath(root))
    candidate = Path(os.path.realpath(root_real / text))
    if candidate != root_real and root_real not in candidate.parents:
        raise UnsafePath(f"'{relative}' points outside the data root")
    return candidate


def relative_to_root(root: Path, path: Path) -> str:
    return Path(os.path.realpath(path)).relative_to(os.path.realpath(root)).as_posix()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Open a temporary file next to ``path``; on clean exit fsync and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    fh = open(tmp, "xb")
    try:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        os.replace(tmp, path)
    except BaseException:
        try:
            fh.close()  # may raise again (flushing onto a full disk); the file is closed all the same
        except OSError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        raise


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Save one array as ``.npy`` (never pickled objects) atomically."""
    if array.dtype == object:
        raise TypeError("object arrays would need pickle; refusing to save them")
    with atomic_writer(path) as fh:
        # through a plain write() method: given a real file, numpy writes with fwrite and reports a full
        # disk as "N requested and M written" without an errno, which no caller can tell from any other error
        np.save(_Writes(fh), np.ascontiguousarray(array), allow_pickle=False)


class _Writes:
    def __init__(self, fh: BinaryIO):
        self.write = fh.write


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 (H, W) or (H, W, C) image (C = 1 or 3) as PNG bytes, deterministically."""
    from PIL import Image

    if image.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def load_npy_rows(path: Path, rows: np.ndarray | list[int] | None = None, mmap: bool = True) -> np.ndarray:
    """Rows of a ``.npy`` shard (memory-mapped; never unpickled)."""
    arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    return arr if rows is None else np.asarray(arr[np.asarray(rows)])


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sweep_temp_files(
    directory: Path, older_than: float = 0.0, is_alive: Callable[[int], bool] | None = None
) -> int:
    """Remove temporary files left by crashed writers under ``directory``; returns how many.

    A temporary file whose writer process is still alive is kept (``is_alive(pid)``; default: checks
    this machine's process table).
    """
    import time

    if not directory.exists():
        return 0
    alive = is_alive or _pid_alive
    removed = 0
    cutoff = time.time() - older_than
    for tmp in directory.rglob(f"*{TMP_MARK}*"):
        try:
            pid = int(tmp.name.rsplit(TMP_MARK, 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            continue
        if (pid == os.getpid() or alive(pid)) or tmp.stat().st_mtime > cutoff:
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
