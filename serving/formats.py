"""Response formats: JSON records, CSV, Arrow IPC stream and Parquet, chosen by `?format=` or `Accept`."""

from __future__ import annotations

import io
from typing import Iterable, Iterator

import polars as pl

JSON, CSV, ARROW, PARQUET = "json", "csv", "arrow", "parquet"
MEDIA_TYPES = {
    JSON: "application/json",
    CSV: "text/csv; charset=utf-8",
    ARROW: "application/vnd.apache.arrow.stream",
    PARQUET: "application/vnd.apache.parquet",
}
# Accept values people send for each format, beyond the canonical media type.
_ACCEPT_ALIASES = {
    "application/json": JSON, "text/json": JSON, "text/csv": CSV, "application/csv": CSV,
    "application/vnd.apache.arrow.stream": ARROW, "application/vnd.apache.arrow": ARROW,
    "application/x-apache-arrow-stream": ARROW, "application/vnd.apache.parquet": PARQUET,
    "application/parquet": PARQUET, "application/x-parquet": PARQUET,
}
ISO_UTC = "%Y-%m-%dT%H:%M:%SZ"


class FormatError(ValueError):
    """The client asked for a format we do not serve."""


def negotiate(query_format: str | None, accept: str | None) -> str:
    """`?format=` wins; else the first acceptable type of `Accept` (by q-value); JSON by default."""
    if query_format:
        fmt = query_format.strip().lower()
        if fmt not in MEDIA_TYPES:
            raise FormatError(f"unknown format {query_format[:40]!r}; choose one of {', '.join(MEDIA_TYPES)}")
        return fmt
    if not accept:
        return JSON
    ranked = []
    for i, part in enumerate(accept.split(",")):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        ranked.append((-q, i, media.lower()))
    wildcard = False
    for neg_q, _i, media in sorted(ranked):
        if neg_q == 0:
            continue
        if media in _ACCEPT_ALIASES:
            return _ACCEPT_ALIASES[media]
        if media in ("*/*", "application/*", "text/*"):
            wildcard = True
    if wildcard:
        return JSON
    raise FormatError(f"cannot produce any of Accept: {accept[:80]!r}; serve one of {', '.join(MEDIA_TYPES.values())} "
                      f"or pass ?format={'|'.join(MEDIA_TYPES)}")


def _textual(df: pl.DataFrame) -> pl.DataFrame:
    """Timestamps as ISO-8601 UTC strings ('2024-01-02T03:04:00Z') for the text formats."""
    return df.with_columns(pl.col(pl.Datetime).dt.strftime(ISO_UTC))


def encode(df: pl.DataFrame, fmt: str) -> bytes:
    """The whole frame in one body."""
    return b"".join(encode_chunks([df], fmt))


def encode_chunks(frames: Iterable[pl.DataFrame], fmt: str) -> Iterator[bytes]:
    """Frames (same schema) as one body in pieces: a JSON array, CSV with one header, one Arrow stream, or one
    Parquet file with a row group per frame. Memory holds one frame at a time, so long ranges stream."""
    if fmt == JSON:
        yield from _json_chunks(frames)
    elif fmt == CSV:
        first = True
        for df in frames:
            if df.height or first:
                yield _textual(df).write_csv(include_header=first).encode()
                first = False
    elif fmt == ARROW:
        yield from _arrow_chunks(frames)
    elif fmt == PARQUET:
        yield from _parquet_chunks(frames)
    else:  # pragma: no cover - negotiate() is the only way in
        raise FormatError(fmt)


def _json_chunks(frames: Iterable[pl.DataFrame]) -> Iterator[bytes]:
    yield b"["
    first = True
    for df in frames:
        if not df.height:
            continue
        body = _textual(df).write_json()  # '[{...},{...}]'; NaN/inf are written as null
        inner = body[1:-1]
        yield (inner if first else "," + inner).encode()
        first = False
    yield b"]"


class _Sink(io.RawIOBase):
    """A write-only file that hands out what was written since the last `take()`."""

    def __init__(self):
        self._parts: list[bytes] = []
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        data = bytes(b)
        self._parts.append(data)
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def _arrow_chunks(frames: Iterable[pl.DataFrame]) -> Iterator[bytes]:
    import pyarrow as pa

    return _table_chunks(frames, lambda sink, schema: pa.ipc.new_stream(sink, schema))


def _parquet_chunks(frames: Iterable[pl.DataFrame]) -> Iterator[bytes]:
    import pyarrow.parquet as pq

    return _table_chunks(frames, lambda sink, schema: pq.ParquetWriter(sink, schema, compression="zstd"))


def _table_chunks(frames: Iterable[pl.DataFrame], open_writer) -> Iterator[bytes]:
    """One pyarrow writer (IPC stream or Parquet) over all frames; the bytes written so far after each frame."""
    sink = _Sink()
    writer = None
    for df in frames:
        table = df.to_arrow()
        if writer is None:
            writer = open_writer(sink, table.schema)
        if table.num_rows:
            writer.write_table(table)
        yield sink.take()
    if writer is not None:
        writer.close()
    yield sink.take()
