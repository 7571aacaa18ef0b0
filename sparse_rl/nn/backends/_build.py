"""Build-on-first-use of the C++ CSR kernels (``csrc/csr_kernels.cpp``) into a cached shared library.

The library is compiled with ``g++`` into ``$SPARSE_RL_CACHE`` (default ``~/.cache/sparse_rl/``; ``XDG_CACHE_HOME`` is
honoured) under a name keyed by a hash of the source, the compiler flags and the host CPU, written to a temporary file
and atomically renamed so that concurrent builds never corrupt it. Flags are tried in order (``-march=native`` and
OpenMP are dropped if the compiler rejects them). A library is used only when its ABI version and struct layout match
:mod:`sparse_rl.nn.backends._abi`. If nothing builds or loads, :func:`load` returns ``None`` and one warning line says
so; the package keeps working on the torch/reference path. ``SPARSE_RL_NO_COMPILE=1`` disables the kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path

from sparse_rl.nn.backends import _abi

SOURCE = Path(__file__).with_name("csrc") / "csr_kernels.cpp"
BASE_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno"]
FLAG_CHOICES = [["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], []]

_lock = threading.Lock()
_state: dict[str, object] = {}


def cache_dir() -> Path:
    """Directory of the compiled kernels."""
    if os.environ.get("SPARSE_RL_CACHE"):
        return Path(os.environ["SPARSE_RL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sparse_rl"


def _cpu_signature() -> str:
    """Host CPU identity, so a ``-march=native`` build is never reused on another CPU sharing the cache."""
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f.read().splitlines() if line.startswith(("model name", "flags"))]
        text += "\n".join(sorted(set(lines)))
    except OSError:
        pass
    return text


def _key(flags: list[str], compiler: str) -> str:
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join([compiler, *BASE_FLAGS, *flags]).encode(), _cpu_signature().encode()):
        digest.update(part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _compile(compiler: str, flags: list[str], target: Path) -> str | None:
    """Compile into ``target`` atomically; the compiler's error text on failure, else None."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob("*.tmp"):  # left by a build that was killed; live builds take seconds
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, *BASE_FLAGS, *flags, str(SOURCE), "-o", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
        mismatch = _abi.check(ctypes.CDLL(tmp))  # refuse a library that does not load (e.g. -fopenmp without its runtime)
        if mismatch is not None:
            return f"the built library does not match the Python mirror of its interface: {mismatch}"
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as err:
        return str(err)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _find_or_build() -> tuple[Path | None, str]:
    compiler = os.environ.get("CXX") or "g++"
    last_error = "no compiler"
    for flags in FLAG_CHOICES:
        target = cache_dir() / f"csr_kernels-{_key(flags, compiler)}.so"
        if target.exists():
            return target, ""
        if shutil.which(compiler) is None:
            continue
        error = _compile(compiler, flags, target)
        if error is None:
            return target, ""
        last_error = error
    if shutil.which(compiler) is None:
        last_error = f"compiler {compiler!r} not found"
    return None, last_error


def load() -> ctypes.CDLL | None:
    """The compiled kernel library (building it on first use), or None with one warning when it cannot be built."""
    if "lib" in _state:
        return _state["lib"]  # type: ignore[return-value]
    with _lock:
        if "lib" in _state:
            return _state["lib"]  # type: ignore[return-value]
        lib = None
        if os.environ.get("SPARSE_RL_NO_COMPILE", "") not in ("", "0"):
            reason = "disabled by SPARSE_RL_NO_COMPILE"
        else:
            path, reason = _find_or_build()
            if path is not None:
                try:
                    lib = ctypes.CDLL(str(path))
                    mismatch = _abi.check(lib)
                    if mismatch is not None:
                        lib, reason = None, f"{path} does not match this package: {mismatch}"
                except OSError as err:
                    lib, reason = None, f"could not load {path}: {err}"
        if lib is None:
            # warn_explicit on a pseudo location: the warning prints as exactly one line (no source line below it)
            warnings.warn_explicit(f"compiled CPU sparse kernel unavailable ({reason}); using the torch/reference path",
                                   RuntimeWarning, "sparse_rl.nn.backends", 0)
        _state["lib"] = lib
        return lib
