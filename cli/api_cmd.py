"""`lakehouse api`: serve the read-only HTTP API and the coverage page (serving/) with uvicorn."""

from __future__ import annotations

import click


@click.command("api")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind; 0.0.0.0 exposes it to the network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes (share the Redis cache when LAKEHOUSE_REDIS_URL is set).")
def api(host, port, workers):
    """Serve the lakehouse over HTTP, read-only: bars, indicators, signals, scores, status and the coverage page.

    Formats by Accept or ?format= (json, csv, arrow, parquet). Open http://HOST:PORT/ for the coverage page and
    /docs or /openapi.json for the API.

    \b
    Example:
        lakehouse api --port 8000
        curl 'http://127.0.0.1:8000/v1/bars/BTC-USDT?interval=1h&start=2024-01-01&end=2024-01-31&format=csv'
    """
    import uvicorn

    from lakehouse.errors import UserInputError
    from serving.settings import ApiSettings

    from .common import UsageFailure, settings

    s = settings()
    try:
        api_settings = ApiSettings.from_env()
    except UserInputError as exc:
        raise UsageFailure(str(exc)) from None
    click.echo(f"Lakehouse root: {s.root}\nCache: {'Redis' if api_settings.redis_url else 'in-process'}\n"
               f"Coverage page: http://{host}:{port}/   API: http://{host}:{port}/docs")
    uvicorn.run("serving.asgi:app", host=host, port=port, workers=workers, log_level="info", access_log=False,
                proxy_headers=False)
