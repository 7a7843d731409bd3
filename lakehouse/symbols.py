"""Unified exchange symbols (BASE/QUOTE) and their safe, reversible encoding as path segments."""

from __future__ import annotations

import re

from .errors import InvalidSymbolError, shorten

# ccxt unified spot symbols: upper-case alphanumerics, one slash. Anything else (dots, backslashes,
# whitespace, '|', which Dagster uses to join multi-partition keys) is refused before it reaches a path.
_SYMBOL_RE = re.compile(r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}$")
_SEPARATOR = "-"


def validate_symbol(symbol: str) -> str:
    """Return the symbol in canonical upper-case form, or raise InvalidSymbolError saying how to write it."""
    if not isinstance(symbol, str):
        raise InvalidSymbolError(f"symbol must be a string like 'BTC/USDT', got {symbol!r}")
    # ASCII first: str.upper() folds look-alikes ('ſ' -> 'S', 'ﬀ' -> 'FF') into a different, valid symbol.
    canonical = symbol.strip().upper() if symbol.isascii() else ""
    if not _SYMBOL_RE.match(canonical):
        raise InvalidSymbolError(
            f"invalid symbol {shorten(symbol)!r}: use the exchange's unified form BASE/QUOTE with ASCII letters "
            f"and digits only, e.g. 'BTC/USDT'"
        )
    return canonical


def encode_symbol(symbol: str) -> str:
    """'BTC/USDT' -> 'BTC-USDT': a single path segment that cannot climb out of its folder."""
    return validate_symbol(symbol).replace("/", _SEPARATOR)


def decode_symbol(segment: str) -> str:
    """'BTC-USDT' -> 'BTC/USDT', the inverse of encode_symbol."""
    base, sep, quote = segment.partition(_SEPARATOR)
    if not sep:
        raise InvalidSymbolError(f"{segment!r} is not an encoded symbol (expected BASE-QUOTE)")
    return validate_symbol(f"{base}/{quote}")
