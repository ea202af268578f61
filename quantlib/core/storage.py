"""Atomic file I/O: every write goes to a temp file in the same folder, is fsynced, then renamed.

A crash at any point leaves either the old file or the new one, never a half-written file; a
process killed mid-write can leave its temp file (`.<name>.<8 random chars>.tmp`), which
`remove_interrupted_writes` deletes on the next run (it matches that exact pattern and nothing else).
Readers turn unreadable files into a one-line `DataError` that names the file and the fix.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantlib.core.errors import DataError

if TYPE_CHECKING:  # pandas is imported by the parquet functions when first used: reading a manifest
    import pandas as pd  # (`run_book.py runs`, `show`) should not pay ~1 s for it

_UMASK = os.umask(0)
os.umask(_UMASK)

TEMP_SUFFIX = ".tmp"
TEMP_PATTERN = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + "$")
"""Names `atomic_path` gives its temp files: `.` + target name + `.` + mkstemp's 8 random characters
(lower-case letters, digits, `_`) + `.tmp`. `remove_interrupted_writes` matches exactly this."""


def _temp_prefix(target: Path) -> str:
    return f".{target.name}."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to `path`; on success fsync it and `os.replace` it onto `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent)
    os.close(fd)
    os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file normal permissions
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_writable(directory: str | os.PathLike, what: str, fix: str) -> Path:
    """`directory`, created if missing, once a file could be created in it; else a one-line DataError
    `<what> <directory>: not writable (<reason>); <fix>` (before any work, not a traceback mid-run)."""
    path = Path(directory)
    try:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"{path} is a file")
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".fw-write-check."):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DataError(f"{what} {path}: not writable ({reason}); {fix}") from None
    return path


def remove_interrupted_writes(directory: str | os.PathLike, targets: set[str] | None = None) -> list[Path]:
    """Delete the temp files of interrupted atomic writes in `directory` (not recursive); return them.

    Only regular files whose name matches `TEMP_PATTERN` are touched, and with `targets` only those
    whose target file name is in it (e.g. `{"registry.parquet"}`). Run it when no other process is
    writing into `directory`: a live writer's temp file looks the same.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        match = TEMP_PATTERN.match(entry.name)
        if not match or not entry.is_file() or entry.is_symlink():
            continue
        if targets is not None and match.group("target") not in targets:
            continue
        entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write `data` to `path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 `text` to `path`."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write `obj` as indented JSON (timestamps and numpy scalars become strings/numbers)."""
    return write_text(path, json.dumps(obj, indent=2, default=_json_default, allow_nan=False) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime.date):  # pd.Timestamp is a datetime
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_parquet(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """Atomically write a DataFrame as parquet (index dropped unless it is named; `parquet_options`)."""
    index = frame.index.name is not None
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=index, **parquet_options(frame, index))
    return Path(path)


def parquet_options(frame: pd.DataFrame, index: bool) -> dict[str, Any]:
    """zstd; a float column with many distinct values (prices, returns) byte-stream-split, which makes
    its bytes compress ~25 % better; every other column dictionary-encoded as by default. Lossless."""
    sample = frame.iloc[:10_000]
    split = [str(c) for c in frame.columns if frame[c].dtype in ("float32", "float64")
             and sample[c].nunique() > len(sample) // 2]
    names = [str(c) for c in frame.columns] + ([str(n) for n in frame.index.names if n is not None] if index else [])
    return {"compression": "zstd", "use_byte_stream_split": split or False,
            "use_dictionary": [n for n in names if n not in split]}


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """Read parquet; a missing or corrupt file raises DataError naming it and the fix."""
    import pandas as pd  # lazily: see the module's imports

    target = Path(path)
    if not target.exists():
        raise DataError(f"missing file {target}: run the stage that writes it first")
    try:
        return pd.read_parquet(target, columns=columns)
    except Exception as exc:  # pyarrow raises many types for corrupt files
        raise DataError(
            f"corrupt parquet file {target} ({type(exc).__name__}: {exc}); "
            f"delete it and re-run the stage that writes it"
        ) from None


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON; a missing or corrupt file raises DataError naming it and the fix."""
    target = Path(path)
    if not target.exists():
        raise DataError(f"missing file {target}: run the stage that writes it first")
    try:
        return json.loads(target.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"corrupt JSON file {target} ({exc}); delete it and re-run its stage") from None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_HASH_MEMO: dict[tuple, str] = {}


def sha256_file_memo(path: Path) -> str:
    """`sha256_file`, remembered per (path, size, mtime, inode): atomic writes give a new inode, so a
    rewritten file is hashed again while an untouched one is hashed once per process."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASH_MEMO:
        _HASH_MEMO[key] = sha256_file(path)
    return _HASH_MEMO[key]


def tree_hash(root: str | os.PathLike) -> str:
    """One sha256 over every file under `root` (relative path and content; temp files of interrupted
    writes ignored): equal only if the tree holds the same files with the same bytes."""
    root = Path(root)
    digest = hashlib.sha256()
    if root.is_dir():
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not TEMP_PATTERN.match(p.name)):
            digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file_memo(path)}\n".encode())
    return digest.hexdigest()


def link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Put `source`'s bytes at `target` atomically: a hard link when both are on one file system (files
    are only ever replaced, never edited in place, so the link cannot change under the target), else a copy."""
    import shutil

    target = Path(target)
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)
    return target
