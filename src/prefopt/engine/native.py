"""prefopt's C kernels (engine/kernels/*.c), built for this machine the first time they are used.

A decode step at a few hundred rows spends more time around the weights' GEMMs than in them: the
attention over each sequence's own cache is hundreds of products of a few rows by a few dozen,
each a separate call inside PyTorch's batched GEMM. A kernel that does one sequence's whole
attention in one pass reads each cache once. Such a kernel is C compiled here with
`-march=native` (the instructions this CPU has: AVX-512 BF16 dot products where it has them),
cached under prefopt's cache folder by the source, the flags and the CPU, and called through
ctypes (no PyTorch headers to compile against, a fraction of a second to build). It runs its
loops on OpenMP, the same runtime PyTorch's CPU build already loaded, so it shares its threads.

Where no C compiler is found, or the build fails, `load` returns None and the caller computes in
PyTorch; `PREFOPT_NATIVE=0` asks for that too."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from prefopt.files import cache_dir, write_atomic

SOURCES = Path(__file__).with_name("kernels")
# -ffast-math lets the compiler reorder float sums and vectorize expf; it is given to the compile
# step alone, since linking with it would set flush-to-zero for the whole process
COMPILE = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-fopenmp", "-fPIC"]
LINK = ["-shared", "-fopenmp"]
_POINTER, _INT, _FLOAT, _LONG = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_int64
# each kernel's arguments, as its C declaration gives them
SIGNATURES = {
    "decode_attention_bf16": (
        [_POINTER] * 3 + [_LONG] * 3 + [_POINTER] * 7 + [_INT] * 7 + [_FLOAT],
        _INT,
    ),
    "rms_norm_bf16": ([_POINTER] * 4 + [_INT, _INT, _FLOAT], None),
    "rotate_bf16": ([_POINTER] * 3 + [_INT] * 3 + [_LONG], None),
    "swiglu_bf16": ([_POINTER] * 2 + [_INT] * 2, None),
    "draw_bf16": ([_POINTER] * 2 + [_INT] * 2 + [_POINTER] * 2, None),
}
log = logging.getLogger(__name__)


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The kernels of `kernels/<name>.c`, built for this CPU (once; then read from the cache), or
    None where they cannot be built here."""
    if os.environ.get("PREFOPT_NATIVE", "1") == "0":
        return None
    compiler = next(filter(shutil.which, (os.environ.get("CC", "cc"), "gcc", "clang")), None)
    if compiler is None:
        log.warning("no C compiler found (cc, gcc, clang or $CC): decoding runs PyTorch's ops")
        return None
    source = (SOURCES / f"{name}.c").read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(COMPILE + LINK).encode(), _cpu()]))
    library = cache_dir() / "kernels" / f"{name}-{key.hexdigest()[:16]}.so"
    if not library.exists():
        try:
            write_atomic(library, _build(compiler, SOURCES / f"{name}.c"))
        except (OSError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", b"") or str(error).encode()
            log.warning(
                "building %s.c failed, decoding runs PyTorch's ops: %s", name, detail.decode()
            )
            return None
    kernels = ctypes.CDLL(str(library))
    for function, (arguments, result) in SIGNATURES.items():
        if hasattr(kernels, function):
            getattr(kernels, function).argtypes = arguments
            getattr(kernels, function).restype = result
    return kernels


def _build(compiler: str, source: Path) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        objects, library = Path(folder, "kernels.o"), Path(folder, "kernels.so")
        run = functools.partial(subprocess.run, check=True, capture_output=True)
        run([compiler, *COMPILE, "-c", str(source), "-o", str(objects)])
        run([compiler, *LINK, str(objects), "-o", str(library), "-lm"])
        return library.read_bytes()


def _cpu() -> bytes:
    """What `-march=native` builds for: the machine and its CPU's model and flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    lines = [line for line in info.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join([platform.machine(), platform.processor(), *lines[:2]]).encode()
