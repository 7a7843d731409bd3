import datetime as dt

import pytest

from lakehouse.config import Settings
from lakehouse.errors import ConfigError


def test_defaults():
    s = Settings.from_env({})
    assert (s.root, s.exchange, s.exchange_url, s.history_start) == ("data", "simulated", None, dt.date(2017, 7, 1))


def test_values_are_read():
    s = Settings.from_env({"LAKEHOUSE_EXCHANGE": "Binance", "LAKEHOUSE_EXCHANGE_URL": "http://127.0.0.1:8090",
                           "LAKEHOUSE_TIMEOUT_S": "2.5", "LAKEHOUSE_HISTORY_START": "2020-01-01"})
    assert (s.exchange, s.exchange_url, s.request_timeout_s, s.history_start) == (
        "binance", "http://127.0.0.1:8090", 2.5, dt.date(2020, 1, 1))


@pytest.mark.parametrize("env, message", [
    ({"LAKEHOUSE_TIMEOUT_S": "fast"}, "LAKEHOUSE_TIMEOUT_S='fast' is not a number"),
    ({"LAKEHOUSE_EXCHANGE_URL": "127.0.0.1:8090"}, "must be an http"),
    ({"LAKEHOUSE_HISTORY_START": "2020-13-01"}, "invalid LAKEHOUSE_HISTORY_START"),
    ({"LAKEHOUSE_FRESHNESS_WARN_HOURS": "5", "LAKEHOUSE_FRESHNESS_FAIL_HOURS": "1"}, "must be >="),
])
def test_malformed_settings_say_which_and_how(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_fetch_concurrency_setting():
    assert Settings.from_env({}).fetch_concurrency == 16
    assert Settings.from_env({"LAKEHOUSE_FETCH_CONCURRENCY": "3"}).fetch_concurrency == 3
    with pytest.raises(ConfigError, match="LAKEHOUSE_FETCH_CONCURRENCY"):
        Settings.from_env({"LAKEHOUSE_FETCH_CONCURRENCY": "0"})


def test_notify_interval_setting():
    assert Settings.from_env({}).notify_interval_s == 30
    assert Settings.from_env({"LAKEHOUSE_NOTIFY_INTERVAL_S": "2"}).notify_interval_s == 2
    with pytest.raises(ConfigError, match="LAKEHOUSE_NOTIFY_INTERVAL_S"):
        Settings.from_env({"LAKEHOUSE_NOTIFY_INTERVAL_S": "0"})
