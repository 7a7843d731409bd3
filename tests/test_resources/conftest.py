"""Fixtures of the live-exchange tests: the loopback Binance emulator over the simulated ground truth."""

import pytest

from lakehouse.exchange.emulator import BinanceEmulator


@pytest.fixture
def emulator(source):
    """A Binance emulator on a free loopback port; bans last 1 s so a test that earns one can still finish."""
    with BinanceEmulator(source=source, ban_s=1) as emu:
        yield emu
