"""Exchange clients: one interface, a live ccxt implementation and a deterministic offline simulator."""

from .base import Exchange, FetchStats, Market

__all__ = ["Exchange", "FetchStats", "Market"]
