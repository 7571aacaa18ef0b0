"""Build-on-first-use of the C++ CSR kernels into cached shared libraries.

Two libraries come from the same kernels (``csrc/csr_core.h``):

- ``csr_kernels-*.so`` (``csrc/csr_kernels.cpp``): a plain C ABI called through ctypes (:func:`load`);
- ``torch_ops-*.so`` (``csrc/torch_ops.cpp``): the kernels registered as PyTorch operators ``torch.ops.sparse_rl.*``
  with their autograd in C++, linked against the running torch (:func:`load_ops`). It is the fast path; the ctypes
  library is the fallback when it cannot be built (no torch headers, another compiler ABI).

Each is compiled with ``g++`` into ``$SPARSE_RL_CACHE`` (default ``~/.cache/sparse_rl/``; ``XDG_CACHE_HOME`` is
honoured) under a name keyed by a hash of the sources, the compiler flags and the host CPU (and the torch build for the
operators), written to a temporary file and atomically renamed so that concurrent builds never corrupt it. Flags are
tried in order (``-march=native`` and OpenMP are dropped if the compiler rejects them). The ctypes library is used only
when its ABI version and struct layout match :mod:`sparse_rl.nn.backends._abi`, the operators only when their version
matches :data:`OPS_VERSION`. If the kernel cannot be built or loaded at all, one warning line says so and the package
keeps working on the torch/reference path. ``SPARSE_RL_NO_COMPILE=1`` disables both libraries.
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

import torch as th

from sparse_rl.nn.backends import _abi

CSRC = Path(__file__).with_name("csrc")
SOURCE = CSRC / "csr_kernels.cpp"
OPS_SOURCE = CSRC / "torch_ops.cpp"
HEADERS = [CSRC / "csr_core.h"]
BASE_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno"]
FLAG_CHOICES = [["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], []]
OPS_VERSION = 2
"""Version of the operator schemas this package calls (``kOpsVersion`` in ``csrc/torch_ops.cpp``)."""

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


def _key(flags: list[str], compiler: str, source: Path = SOURCE) -> str:
    digest = hashlib.sha256()
    parts = [source.read_bytes(), *(h.read_bytes() for h in HEADERS), " ".join([compiler, *BASE_FLAGS, *flags]).encode(),
             _cpu_signature().encode()]
    for part in parts:
        digest.update(part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _torch_flags() -> tuple[list[str], list[str]]:
    """Compile flags and link flags (after the source) of an extension of the running torch (headers, libraries, C++
    ABI; its version keys the cached library)."""
    root = Path(th.__file__).resolve().parent
    lib = root / "lib"
    compile_flags = ["-std=c++20", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={int(th._C._GLIBCXX_USE_CXX11_ABI)}",
                     f"-I{root / 'include'}", f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
                     f"-DSRL_TORCH_VERSION={th.__version__}"]
    return compile_flags, [f"-L{lib}", "-lc10", "-ltorch_cpu", "-ltorch", f"-Wl,-rpath,{lib}"]


def _compile(compiler: str, flags: list[str], target: Path, source: Path = SOURCE, link: tuple[str, ...] = ()) -> str | None:
    """Compile into ``target`` atomically; the compiler's error text on failure, else None."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob("*.tmp"):  # left by a build that was killed; live builds take seconds
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, *BASE_FLAGS, *flags, str(source), *link, "-o", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
        if source == SOURCE:
            mismatch = _abi.check(ctypes.CDLL(tmp))  # refuse a library that does not load (-fopenmp without its runtime)
            if mismatch is not None:
                return f"the built library does not match the Python mirror of its interface: {mismatch}"
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as err:
        return str(err)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _find_or_build(source: Path = SOURCE) -> tuple[Path | None, str]:
    compiler = os.environ.get("CXX") or "g++"
    last_error = "no compiler"
    ops = source == OPS_SOURCE
    compile_flags, link = _torch_flags() if ops else ([], [])
    for choice in FLAG_CHOICES:
        flags = [*choice, *compile_flags]
        target = cache_dir() / f"{'torch_ops' if ops else 'csr_kernels'}-{_key([*flags, *link], compiler, source)}.so"
        if target.exists():
            return target, ""
        if shutil.which(compiler) is None:
            continue
        error = _compile(compiler, flags, target, source, tuple(link))
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


def load_ops() -> bool:
    """Load the PyTorch operators ``torch.ops.sparse_rl.*`` (building them on first use); False when they cannot be.

    No warning here: the CPU backend says once what it runs on (see :func:`status`).
    """
    if "ops" in _state:
        return bool(_state["ops"])
    with _lock:
        if "ops" in _state:
            return bool(_state["ops"])
        ok, reason = False, "disabled by SPARSE_RL_NO_COMPILE"
        if os.environ.get("SPARSE_RL_NO_COMPILE", "") in ("", "0"):
            path, reason = _find_or_build(OPS_SOURCE)
            if path is not None:
                try:
                    th.ops.load_library(str(path))
                    version = int(th.ops.sparse_rl.ops_version())
                    ok = version == OPS_VERSION
                    reason = "" if ok else f"{path} has operator version {version}, this package needs {OPS_VERSION}"
                except (OSError, RuntimeError, AttributeError) as err:
                    reason = f"could not load {path}: {err}"
        _state["ops"], _state["ops_reason"] = ok, reason
        return ok


def ops_unavailable_reason() -> str:
    """Why :func:`load_ops` returned False (empty when it did not, or was not called)."""
    return str(_state.get("ops_reason", ""))
