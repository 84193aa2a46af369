"""Atomic file writes (a crash never leaves a half-written catalog, dataset or checkpoint) and
user paths that stay inside the folder the user named."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>


class InputError(ValueError):
    """Bad user input: the message names the file, row, column or parameter, and what to do.

    Entry points print it as one `error: ...` line (no traceback) and exit with status 1.
    """


class InputNotFoundError(InputError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class UnsafePathError(InputError):
    """A user-given path that would leave the folder it must stay in."""


def contained_path(root: str | os.PathLike, path: str | os.PathLike, what: str = "path",
                   allow_absolute: bool = False) -> Path:
    """`root / path`, resolved, if it stays inside `root`; else UnsafePathError, and nothing is read.

    Absolute paths (unless `allow_absolute`, for sources that store them, and then only
    inside `root`), `..` that climbs out and symlinks that point out all count as leaving;
    `a/../b.jpg` that stays inside is fine. The check resolves names; it opens no file.
    """
    text = os.fspath(path)
    if "\0" in text:
        raise UnsafePathError(f"{what} {text!r} holds a NUL character")
    if (os.path.isabs(text) or Path(text).drive) and not allow_absolute:
        raise UnsafePathError(f"{what} {text!r} is absolute; give it relative to {root}")
    base = Path(root).resolve()
    target = (base / text).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"{what} {text!r} leads outside {root} (to {target})")
    return target


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    Works for files and for directories (e.g. `Dataset.save_to_disk`, or a whole output
    directory with its manifest inside): whatever the block writes at the yielded path
    replaces `path` in one step, so a reader sees the old content or the new, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"nothing was written to {target} for {path}")
        _replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace(new: Path, path: Path) -> None:
    """Put `new` at `path` in one step; an old directory at `path` ends up at `new` (then removed)."""
    if not (path.is_dir() and not path.is_symlink()):
        os.replace(new, path)
        return
    try:
        os.replace(new, path)  # rename(2) replaces an empty directory
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if not _exchange(new, path):
        # No atomic exchange here: between these two renames `path` is absent (never torn).
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-run the stage that writes it") from e
