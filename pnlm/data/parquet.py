"""The Parquet reader: a string column (`text`, or `text_field`), one record batch at a time; nulls are empty
documents. pyarrow is imported only when a Parquet file is read (pip install 'pnlm[data]')."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pnlm.errors import InputError

PARQUET_BATCH_ROWS = 1024


def first_names(names: Iterable[str], most: int = 10) -> str:
    """Names for a message: the first `most`, and how many there are in all."""
    names = list(names)
    shown = ", ".join(names[:most]) + (f", … ({len(names)} in all)" if len(names) > most else "")
    return shown or "none"


def pyarrow_parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading Parquet needs pyarrow: pip install 'pnlm[data]'") from None
    return pq


def _is_string_type(dtype) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    is_string_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or is_string_view(dtype)


def _check_text_column(path: Path, schema, field: str) -> None:
    if field not in schema.names:
        raise InputError(f"{path}: no column \"{field}\"; columns: {first_names(schema.names)}")
    dtype = schema.field(field).type
    if not _is_string_type(dtype):
        raise InputError(f"{path}: column \"{field}\" is {dtype}, not a string column")


def read_parquet(path: Path, opts: Any) -> Iterator[str]:
    pq = pyarrow_parquet(path)
    import pyarrow as pa

    try:  # ValueError: also a schema whose names are not UTF-8
        parquet_file = pq.ParquetFile(path)
        schema = parquet_file.schema_arrow
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    with parquet_file:
        _check_text_column(path, schema, opts.text_field)
        batches = parquet_file.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[opts.text_field])
        rows = 0
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError, ValueError) as exc:
                raise InputError(f"{path}: corrupt Parquet data after row {rows} ({exc})") from None
            if batch is None:
                return
            try:
                texts = batch.column(0).to_pylist()
            except UnicodeDecodeError as exc:  # a string column holding bytes that are not UTF-8
                raise InputError(f"{path}: rows {rows + 1} to {rows + batch.num_rows}: column \"{opts.text_field}\" "
                                 f"is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            rows += batch.num_rows
            yield from (text or "" for text in texts)
