"""Exception hierarchy: every error a user can cause or meet says what was wrong and how to fix it."""

from __future__ import annotations

SHOWN_CHARS = 40


def shorten(value, limit: int = SHOWN_CHARS) -> str:
    """A user's value as a message may show it: at most `limit` characters, with the full length when cut."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class LakehouseError(Exception):
    """Base of every error raised by the lakehouse library."""


class UserInputError(LakehouseError, ValueError):
    """Bad input from a user (symbol, date, config); nothing was changed."""


class InvalidSymbolError(UserInputError):
    """A symbol that is not of the unified BASE/QUOTE form, or that could escape the data folder."""


class InvalidDateError(UserInputError):
    """A date that does not parse, or a range whose start is after its end."""


class ConfigError(UserInputError):
    """A malformed setting (environment variable or config value)."""


class ExchangeError(LakehouseError):
    """Anything that went wrong talking to an exchange."""


class UnknownExchangeError(ExchangeError, UserInputError):
    """The exchange id is not one that ccxt (or the offline simulator) knows."""


class UnknownSymbolError(ExchangeError, UserInputError):
    """The exchange does not list this symbol; retrying cannot help."""


class TransientExchangeError(ExchangeError):
    """A failure that may pass: 5xx, timeout, network error, malformed body, maintenance."""


class RateLimitedError(TransientExchangeError):
    """The exchange answered 429 (or 418): we must back off for `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float | None = None, banned: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.banned = banned


class IncompleteFetchError(ExchangeError):
    """What the exchange returned does not match what was asked; nothing was written."""


class StorageError(LakehouseError):
    """A partition file could not be read or written."""


class CorruptPartitionError(StorageError):
    """A partition file exists but is unreadable (torn, truncated or not Parquet)."""
