import pytest

from lakehouse.errors import InvalidSymbolError
from lakehouse.symbols import decode_symbol, encode_symbol, validate_symbol


def test_round_trip():
    assert encode_symbol("BTC/USDT") == "BTC-USDT"
    assert decode_symbol("BTC-USDT") == "BTC/USDT"
    assert validate_symbol(" eth/usdt ") == "ETH/USDT"


@pytest.mark.parametrize("bad", ["../../etc/passwd", "BTC/../USDT", "BTC\\USDT", "BTCUSDT", "BTC/USDT/X",
                                 "BTC|USDT", "", "/", "BTC/", "B TC/USDT", "BTC/USDT\x00"])
def test_symbols_that_could_escape_or_break_keys_are_refused(bad):
    with pytest.raises(InvalidSymbolError, match="BASE/QUOTE"):
        validate_symbol(bad)
