"""A Python audit hook (PEP 578) for runs without a sandbox (`unsafe_local`): it refuses to start
processes, open sockets, signal, or write, rename or delete outside the working directory. Code
in the same process can get around it (it is not a wall): it is the last layer where bubblewrap
cannot run, never the only one where it can."""

import os
import sys

BLOCKED = {
    "os.system", "os.exec", "os.fork", "os.forkpty", "os.spawn", "os.posix_spawn",
    "subprocess.Popen", "socket.connect", "socket.bind", "socket.sendto", "pty.spawn",
    "ctypes.dlopen", "os.kill", "os.killpg",
}  # fmt: skip
WRITES = {
    "os.remove", "os.rmdir", "os.rename", "os.truncate", "shutil.rmtree", "shutil.move",
    "os.chmod", "os.chown", "os.mkdir", "os.symlink", "os.link",
}  # fmt: skip


def install(home):
    home = os.path.realpath(home)

    def inside(path):
        if isinstance(path, int):
            return True
        path = os.fsdecode(path)
        return os.path.realpath(os.path.join(home, path)).startswith(home + os.sep)

    def hook(event, args):
        if event in BLOCKED:
            raise PermissionError(f"sandbox: {event} is not allowed")
        paths = [a for a in args[:2] if isinstance(a, (str, bytes, int))]
        if event in WRITES and not all(inside(a) for a in paths):
            raise PermissionError(f"sandbox: {event} outside the working directory")
        if event == "open":
            path, mode, flags = args
            if mode is not None:
                writes = any(m in str(mode) for m in "wax+")
            else:
                writes = bool(
                    flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
                )
            if writes and not inside(path):
                raise PermissionError("sandbox: writing outside the working directory")

    sys.addaudithook(hook)
