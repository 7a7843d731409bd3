"""The read-only HTTP API and the coverage page: a thin ASGI layer over the `lakehouse` library.

`create_app()` builds the FastAPI application; `lakehouse api` serves it with uvicorn. Nothing here writes data:
every read goes through `lakehouse.api` (read_bars, read_indicators, read_signals, read_scores), `Storage` and the
audit, and Dagster is imported only where run information is asked for.
"""

from .app import create_app

__all__ = ["create_app"]
