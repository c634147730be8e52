"""Items, a store with people, and a real `prefopt label serve` process for the label tests."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HOSTILE = (
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2">',
    '<a href="javascript:window.__pwned = 3">click me</a>',
)


def item_rows(pairs: int = 4, lists: int = 1, k: int = 4) -> list[dict]:
    rows = [
        {
            "prompt": f"Question {i}: what is {i} + {i}?",
            "completions": [
                f"It is {2 * i}.",
                f"Maybe {2 * i + 1}?\n```python\nprint({i} + {i})\n```",
            ],
        }
        for i in range(pairs)
    ]
    rows += [
        {
            "prompt": [{"role": "user", "content": f"Rank these answers {j}"}],
            "completions": [f"answer {j}.{c}" for c in range(k)],
        }
        for j in range(lists)
    ]
    return rows


def write_items(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`prefopt label serve` in a process of its own (killable), on a free loopback port."""

    def __init__(self, items: Path | None, db: str, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        script = Path(sys.executable).parent / "prefopt"
        command = [str(script), "label", "serve", "--db", db, "--port", str(self.port), *args]
        command += ["--items", str(items)] if items else []
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "NO_COLOR": "1"},
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stdout.read()}")
            try:
                httpx.get(self.url + "/login", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not start in 60 s")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


INITDB = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
NO_POSTGRES = "no PostgreSQL server installed (Debian: apt-get install postgresql; make test does this when it can)"


@contextlib.contextmanager
def postgres_server():
    """A real PostgreSQL server from Debian's package, in a temporary folder, on a free port; yields
    its SQLAlchemy URL."""
    bin_dir = Path(INITDB[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="prefopt-pg-"))
    folder.chmod(0o755)
    data = folder / "data"
    as_user = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    run = lambda *args: subprocess.run(
        [*as_user, *map(str, args)], check=True, capture_output=True, text=True
    )
    run(bin_dir / "initdb", "-D", data, "-U", "prefopt", "--auth=trust", "-E", "UTF8")
    run(
        bin_dir / "pg_ctl",
        "-D",
        data,
        "-w",
        "-l",
        folder / "log",
        "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200",
        "start",
    )
    try:
        yield f"postgresql+psycopg://prefopt@127.0.0.1:{port}/postgres"
    finally:
        run(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)
