"""Every file a later stage or a resume reads is written all or nothing: under a staging name beside
its final one, then renamed over it (a rename within a folder is atomic), so an interruption leaves
the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path


def cache_dir() -> Path:
    """Where prefopt keeps what it can rebuild (converted models, reference log-probs, oracles'
    answers, built kernels): $PREFOPT_CACHE, else prefopt under the user's cache folder."""
    root = (
        os.environ.get("PREFOPT_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prefopt"
    )
    return Path(root)


def staging_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place (`write_atomic`, or a writer that
    streams into the staging file and renames it when done): named by the writing process, so
    that processes writing the same file at once (the ranks of a run, the workers of a study)
    never rename each other's half-written file."""
    return path.with_name(f"{path.name}.{os.getpid()}.partial")


def write_atomic(path: str | Path, content: str | bytes | Callable[[Path], None]) -> Path:
    """Write `content` (text as UTF-8, bytes, or a function that writes a file or a folder at the
    path it is given) to `path`, all or nothing; the folder above is made if missing. A folder
    another process put in place first is kept (it holds the same content)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(path)
    if staging.is_dir():  # what an interrupted earlier write of this process left
        shutil.rmtree(staging)
    if callable(content):
        content(staging)
    else:
        with staging.open("wb") as handle:  # synced: a crash of the machine leaves no empty file
            handle.write(content if isinstance(content, bytes) else content.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
    try:
        os.replace(staging, path)
    except OSError:  # a folder is not renamed over another one
        if not (staging.is_dir() and path.is_dir()):
            raise
        shutil.rmtree(staging)
    return path


def write_json(path: str | Path, value) -> Path:
    return write_atomic(path, json.dumps(value, indent=1, ensure_ascii=False))


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    return write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_json(path: str | Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))
