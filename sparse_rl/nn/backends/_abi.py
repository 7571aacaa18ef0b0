"""The compiled kernel's interface, mirrored once: ctypes twins of the C structs, dtype codes, and the ABI check.

The C side (``csrc/csr_kernels.cpp``) declares its structs from field lists and reports them at run time:
``srl_abi_version()`` and ``srl_abi_layout()`` (each struct's size and field offsets as text). :func:`check` compares
both with the structs below, so a library built from other sources (a stale cache, a hand-built file) is refused
instead of being called with misplaced arguments. Every field is 8 bytes wide: no padding, one layout on every 64-bit
ABI. Change a struct here and in the C source together, and bump :data:`ABI_VERSION` in both.
"""

from __future__ import annotations

import ctypes

import torch as th

ABI_VERSION = 4
"""Version of the interface this module mirrors (``SRL_ABI_VERSION`` in the C source)."""

# dtype codes (the C enum): never 0, so a field left unset is caught by the kernel
INT16, INT32, FLOAT32, FLOAT64 = 16, 32, 1032, 1064
VALUE_DTYPES: dict[th.dtype, int] = {th.float32: FLOAT32, th.float64: FLOAT64}
INDEX_DTYPES: dict[th.dtype, int] = {th.int16: INT16, th.int32: INT32}
# status codes returned by srl_forward / srl_backward
STATUS = {0: "ok", 1: "unsupported dtype", 2: "missing or inconsistent argument"}

_ptr, _i64 = ctypes.c_void_p, ctypes.c_int64


class Csr(ctypes.Structure):
    """``srl_csr``: a sparse ``[rows, cols]`` matrix in CSR (or the CSC layout of a weight, as the CSR of its transpose).

    Fields: ``indptr`` (int32 ``[rows + 1]``), ``indices`` (``[nnz]``, int16 or int32 as ``index_dtype`` says),
    ``perm`` (int32 ``[nnz]``: the values slot of each entry, ``None`` for the identity), ``blocks`` and ``nblk`` (the
    column blocks of :func:`sparse_rl.nn.backends.cpu.column_blocks`, ``None`` and 0 for none), ``rows``, ``cols``,
    ``index_dtype`` (:data:`INT16` or :data:`INT32`). Pointers are ``data_ptr()`` integers.
    """

    _fields_ = [("indptr", _ptr), ("indices", _ptr), ("perm", _ptr), ("blocks", _ptr), ("nblk", _i64), ("rows", _i64),
                ("cols", _i64), ("index_dtype", _i64)]


class ForwardArgs(ctypes.Structure):
    """``srl_forward_args``: ``y [batch, rows] = x W^T + bias``.

    ``weight`` is the address of a :class:`Csr`; ``dtype`` (:data:`FLOAT32` or :data:`FLOAT64`) types ``values``,
    ``bias`` (``None`` for none), ``x`` (``[batch, cols]`` with strides ``x_stride_batch``, ``x_stride_feature`` in
    elements), ``x_chunked`` (``[batch * cols]``, receives x feature-major; ``None`` when x is feature-major already:
    batch stride 1, or one row) and ``y`` (contiguous). ``threads``: at most this many OpenMP threads.
    """

    _fields_ = [("weight", _ptr), ("dtype", _i64), ("values", _ptr), ("bias", _ptr), ("x", _ptr), ("batch", _i64),
                ("x_stride_batch", _i64), ("x_stride_feature", _i64), ("x_chunked", _ptr), ("y", _ptr),
                ("threads", _i64)]


class BackwardArgs(ctypes.Structure):
    """``srl_backward_args``: the gradients of ``y = x W^T + bias`` given ``dy [batch, rows]``.

    ``weight_t`` is the address of the CSC layout (a :class:`Csr` of ``W^T`` with int32 indices and ``perm``), needed
    for ``dx``. The input is ``x_chunked`` (feature-major, as saved by the forward) or, when the forward read it in
    place, ``x`` itself with its strides. ``dy_chunked`` is scratch for ``dy`` feature-major (``None`` when it is
    feature-major already). Outputs ``dx [batch, cols]``,
    ``dvalues [nnz]`` and ``dbias [rows]`` are skipped when ``None``.
    """

    _fields_ = [("weight", _ptr), ("weight_t", _ptr), ("dtype", _i64), ("values", _ptr), ("dy", _ptr), ("batch", _i64),
                ("dy_stride_batch", _i64), ("dy_stride_feature", _i64), ("dy_chunked", _ptr), ("x", _ptr),
                ("x_stride_batch", _i64), ("x_stride_feature", _i64), ("x_chunked", _ptr), ("dx", _ptr),
                ("dvalues", _ptr), ("dbias", _ptr), ("threads", _i64)]


STRUCTS: dict[str, type[ctypes.Structure]] = {
    "srl_csr": Csr, "srl_forward_args": ForwardArgs, "srl_backward_args": BackwardArgs,
}


def layout() -> str:
    """The layout text the C side reports for these structs (``"srl_csr 64 indptr@0 indices@8 ...; ..."``)."""
    parts = []
    for name, struct in STRUCTS.items():
        fields = " ".join(f"{field[0]}@{getattr(struct, field[0]).offset}" for field in struct._fields_)
        parts.append(f"{name} {ctypes.sizeof(struct)} {fields}")
    return "; ".join(parts)


def bind(lib: ctypes.CDLL) -> None:
    """Declare the C signatures of the entry points (each takes the address of its args struct)."""
    lib.srl_abi_version.argtypes, lib.srl_abi_version.restype = [], ctypes.c_int64
    lib.srl_abi_layout.argtypes, lib.srl_abi_layout.restype = [], ctypes.c_char_p
    for entry in (lib.srl_forward, lib.srl_backward):
        entry.argtypes, entry.restype = [ctypes.c_void_p], ctypes.c_int64


def check(lib: ctypes.CDLL) -> str | None:
    """Why ``lib`` cannot be used with this module (another ABI version or struct layout), or ``None`` when it can.

    :param lib: a loaded kernel library
    """
    try:
        bind(lib)
    except AttributeError as err:  # a library from before the struct interface (ABI 2) has no srl_forward
        return f"it lacks an entry point ({err}); it predates ABI version {ABI_VERSION}"
    version = int(lib.srl_abi_version())
    if version != ABI_VERSION:
        return f"its ABI version is {version}, this package needs {ABI_VERSION}"
    theirs = (lib.srl_abi_layout() or b"").decode()
    if theirs != layout():
        return f"its struct layout differs: {theirs!r} != {layout()!r}"
    return None


def raise_for_status(status: int, entry: str) -> None:
    """Turn a non-zero status of an entry point into a ``RuntimeError``.

    :param status: the entry point's return value
    :param entry: its name, for the message
    :raises RuntimeError: when ``status`` is not 0
    """
    if status:
        raise RuntimeError(f"sparse_rl kernel {entry} failed: {STATUS.get(status, f'status {status}')}")
