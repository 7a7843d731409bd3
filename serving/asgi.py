"""The ASGI entry point uvicorn imports (`serving.asgi:app`), configured from the environment."""

from .app import create_app

app = create_app(warm_status=True)
