"""numpy <-> pyarrow for plain arrays, through their buffers.

pyarrow's own conversions (``pa.array(ndarray)``, ``Array.to_numpy``) import pandas on first use
(about 0.2-0.4 s), which a command-line scorer that starts in a fraction of a second cannot
afford. These helpers cover what the bulk CSV reader needs: arrays without nulls of booleans,
integers and floats, and a string array over one bytes object. Nothing here copies more than the
conversion requires.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_NUMPY = {pa.int32(): np.int32, pa.int64(): np.int64, pa.float64(): np.float64,
          pa.uint32(): np.uint32, pa.uint64(): np.uint64}


def to_numpy(array: pa.Array) -> np.ndarray:
    """(N,) numpy view/copy of a boolean, integer or float64 ``array`` without nulls."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.null_count:
        raise ValueError(f"to_numpy: {array.null_count} null(s) in a {array.type} array")
    n, offset = len(array), array.offset
    data = array.buffers()[1]
    if array.type == pa.bool_():
        if n == 0:
            return np.zeros(0, dtype=bool)
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        return bits[offset:offset + n].astype(bool)
    dtype = _NUMPY.get(array.type)
    if dtype is None:
        raise TypeError(f"to_numpy: unsupported arrow type {array.type}")
    if n == 0:
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(data, dtype=dtype, count=n, offset=offset * np.dtype(dtype).itemsize)


def indices(values: np.ndarray) -> pa.Array:
    """An int64 arrow array of ``values`` (N,), for ``take``."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Int64Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def lines(data: bytes) -> pa.LargeStringArray:
    """The lines of UTF-8 ``data`` (split at every ``\\n``, as ``str.split("\\n")``), each with
    its ``\\n`` still at the end (callers trim). ``data`` must be valid UTF-8."""
    buf = np.frombuffer(data, np.uint8)
    starts = np.flatnonzero(buf == 10) + 1
    offsets = np.concatenate([[0], starts, [len(buf)]]).astype(np.int64)
    return pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets),
                                            pa.py_buffer(data))
