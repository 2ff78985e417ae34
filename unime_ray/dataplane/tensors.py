"""Embeddings as fixed-size Arrow tensor columns, read zero-copy into numpy.

A column of ``FixedSizeList<float32|float16>[dim]`` is one contiguous buffer of
``rows x dim`` values: numpy views it without copying, Parquet stores it as is, and no
Python list of floats is ever built. A failed row is null (its slot holds zeros).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa

VectorDtype = Literal["float32", "float16"]
ARROW_TYPES = {"float32": pa.float32(), "float16": pa.float16()}


def tensor_column(matrix: np.ndarray, dtype: VectorDtype = "float32", valid: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """[n, dim] -> a FixedSizeList column; rows where ``valid`` is False are null."""
    matrix = np.ascontiguousarray(matrix, dtype=np.dtype(dtype))
    rows, dim = matrix.shape
    values = pa.array(matrix.reshape(-1), type=ARROW_TYPES[dtype])
    mask = None if valid is None else pa.array(~np.asarray(valid, dtype=bool))
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=mask)


def vectors(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A FixedSizeList column as a [n, dim] array: a view for one chunk, one copy to join
    several. Null rows come back as whatever their slots hold; check ``column.is_valid()``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not pa.types.is_fixed_size_list(column.type):
        raise TypeError(f"expected a fixed-size tensor column, got {column.type}")
    dim = column.type.list_size
    # Straight from the data buffer: ``.values`` ignores a slice's offset, ``.flatten()``
    # drops null rows, and ``to_numpy`` copies when Parquet has nulled a null row's slots.
    values = column.values
    dtype = values.type.to_pandas_dtype()
    start = (values.offset + column.offset * dim)
    return np.frombuffer(values.buffers()[1], dtype=dtype, count=len(column) * dim,
                         offset=start * np.dtype(dtype).itemsize).reshape(len(column), dim)
