"""Crash-safe file writes: every file distral writes is written beside its destination
under a temporary name, then renamed into place, so a crash leaves the old file or the
new one, never half of one."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file object to write `path` through: a temporary file in the same directory that
    replaces `path` when the block ends without an error (and is removed if it does not).
    Permissions follow the umask, as for a plain `open`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, newline=None if "b" in mode else "") as fh:
            yield fh
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, text: str) -> None:
    """Writes `text` to `path` atomically."""
    with atomic_output(path) as fh:
        fh.write(text)


def atomic_write_rows(path: str | Path, rows: Sequence[Sequence[Any]]) -> None:
    """Writes CSV `rows` (header first) to `path` atomically."""
    with atomic_output(path) as fh:
        csv.writer(fh).writerows(rows)


def json_safe(x: Any) -> Any:
    """`x` with every non-finite float replaced by None (JSON has no NaN or inf)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    return x


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    """Writes `obj` as strict JSON (NaN and inf as null) to `path` atomically."""
    atomic_write(path, json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n")
