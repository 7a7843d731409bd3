"""lakehouse.notify: message wording, Slack JSON, and sending over real loopback HTTP (retry, timeout, dead URL)."""

import pytest

from lakehouse.config import Settings
from lakehouse.errors import ConfigError
from lakehouse.notify import (
    FIRST_LOOK,
    DeliveryLog,
    FreshnessChange,
    Notification,
    asset_freshness_change,
    freshness_notification,
    notify,
    redact,
    run_failure_notification,
    send,
    symbol_freshness_changes,
)
from lakehouse.storage import Storage

from helpers import free_port
from webhook_receiver import WebhookReceiver


def no_sleep(_s):
    pass


def test_run_failure_message_and_its_slack_json():
    n = run_failure_notification(
        "r-1", "__ASSET_JOB", ["raw_ohlcv", "clean_bars"], "BTC/USDT 2024-03-05..2024-03-10",
        ["raw_ohlcv: exchange said <500> & gave up"],
        {"lakehouse/launched_by": "lakehouse_repair", "lakehouse/repair": "refetch", "lakehouse/reasons": "6 missing"},
        "http://127.0.0.1:3000/")
    assert n.text() == (
        "[FAIL] lakehouse run failed: clean_bars, raw_ohlcv for BTC/USDT 2024-03-05..2024-03-10\n"
        "run r-1\n"
        "error: raw_ohlcv: exchange said <500> & gave up\n"
        "launched by lakehouse_repair (refetch: 6 missing)\n"
        "Open the run in Dagster: http://127.0.0.1:3000/runs/r-1")
    assert n.payload() == {
        "text": n.text(),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text":
                "*[FAIL] lakehouse run failed: clean_bars, raw_ohlcv for BTC/USDT 2024-03-05..2024-03-10*\n"
                "run r-1\n"
                "error: raw_ohlcv: exchange said &lt;500&gt; &amp; gave up\n"
                "launched by lakehouse_repair (refetch: 6 missing)"}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": "<http://127.0.0.1:3000/runs/r-1|Open the run in Dagster>"}]},
        ],
    }


def test_a_run_dagster_will_retry_says_so():
    n = run_failure_notification("r-3", "job", ["raw_ohlcv"], None, ["raw_ohlcv: timeout"], {"dagster/will_retry": "true"})
    assert n.lines[-1] == "Dagster will retry this run (run_retries); a retry that fails is reported too"


def test_a_huge_error_is_clipped_to_what_slack_accepts():
    n = run_failure_notification("r-2", "job", [], None, ["x" * 10_000] * 6)
    assert len(n.payload()["blocks"][0]["text"]["text"]) <= 2900
    assert n.title == "lakehouse run failed: job" and n.link is None


def test_symbol_tiers_notify_only_when_they_get_worse():
    now = {
        "A/USDT": {"tier": "aging", "last_candle": "2024-03-10T09:00:00Z", "age_minutes": 200},
        "B/USDT": {"tier": "stale", "last_candle": "2024-03-09T09:00:00Z", "age_minutes": 1600},
        "C/USDT": {"tier": "fresh", "last_candle": "2024-03-10T12:00:00Z", "age_minutes": 3},
        "D/USDT": {"tier": "empty", "last_candle": None, "age_minutes": None},  # just added, backfill pending
        "E/USDT": {"tier": "aging", "last_candle": "2024-03-10T09:00:00Z", "age_minutes": 150},
        "F/USDT": {"tier": "empty", "last_candle": None, "age_minutes": None},
        "G/USDT": {"tier": "aging", "last_candle": "2024-03-10T10:00:00Z", "age_minutes": 90},
    }
    before = {"A/USDT": "fresh", "B/USDT": "aging", "C/USDT": "stale", "E/USDT": "stale", "F/USDT": "fresh"}
    assert symbol_freshness_changes(before, now) == [
        FreshnessChange("A/USDT", "WARN", "was fresh", "aging, last candle 2024-03-10T09:00:00Z (3.3 h old)"),
        FreshnessChange("B/USDT", "FAIL", "was aging", "stale, last candle 2024-03-09T09:00:00Z (26.7 h old)"),
        FreshnessChange("F/USDT", "FAIL", "was fresh", "no candles"),
        FreshnessChange("G/USDT", "WARN", "new symbol", "aging, last candle 2024-03-10T10:00:00Z (90 min old)"),
    ]
    # The sensor's first look reports what is already WARN/FAIL, except symbols without candles yet.
    assert [(c.subject, c.since) for c in symbol_freshness_changes(None, now)] == [
        ("A/USDT", FIRST_LOOK), ("B/USDT", FIRST_LOOK), ("E/USDT", FIRST_LOOK), ("G/USDT", FIRST_LOOK)]
    assert symbol_freshness_changes({s: r["tier"] for s, r in now.items()}, now) == []


def test_asset_state_changes_that_notify():
    assert asset_freshness_change("raw_ohlcv", "PASS", "WARN", "d") == FreshnessChange("raw_ohlcv", "WARN", "was PASS", "d")
    assert asset_freshness_change("raw_ohlcv", "WARN", "FAIL", "d").severity == "FAIL"
    assert asset_freshness_change("raw_ohlcv", None, "FAIL", "d").since == "already so at the sensor's first look"
    assert [asset_freshness_change("raw_ohlcv", a, b, "d") for a, b in
            [("FAIL", "PASS"), ("UNKNOWN", "PASS"), ("WARN", "WARN"), ("PASS", "UNKNOWN"), (None, "PASS")]] == [None] * 5


def test_freshness_message_puts_the_worst_first():
    n = freshness_notification([FreshnessChange("A/USDT", "WARN", "was fresh", "aging"),
                                FreshnessChange("B/USDT", "FAIL", "was aging", "stale")], "http://ui:3000")
    assert n.text().splitlines() == [
        "[FAIL] lakehouse freshness FAIL: B/USDT, A/USDT",
        "B/USDT: FAIL (was aging): stale",
        "A/USDT: WARN (was fresh): aging",
        "Open raw_ohlcv in Dagster: http://ui:3000/assets/raw_ohlcv",
    ]


MESSAGE = Notification("run_failure", "FAIL", "lakehouse run failed: raw_ohlcv", ("error: boom",))


def test_send_posts_the_json_once():
    with WebhookReceiver() as hook:
        delivery = send(MESSAGE, hook.url)
    assert (delivery.sent, delivery.attempts, delivery.status) == (True, 1, 200)
    assert hook.messages == [MESSAGE.payload()]


@pytest.mark.parametrize("statuses, sent, attempts, requests", [
    ([500], True, 2, 2),          # a 5xx is retried once
    ([429], True, 2, 2),
    ([503, 502], False, 2, 2),    # ...and only once
    ([404], False, 1, 1),         # the receiver refused this message: sending it again cannot help
])
def test_send_retries_once_on_server_errors_only(statuses, sent, attempts, requests):
    with WebhookReceiver(statuses) as hook:
        delivery = send(MESSAGE, hook.url, sleep=no_sleep)
    assert (delivery.sent, delivery.attempts, hook.requests) == (sent, attempts, requests)
    if not sent:
        assert delivery.error.startswith(f"HTTP {statuses[-1]}: receiver error")


def test_a_slow_webhook_times_out_and_the_retry_gets_through():
    with WebhookReceiver(["slow"], slow_s=1.0) as hook:
        delivery = send(MESSAGE, hook.url, timeout_s=0.3, sleep=no_sleep)
    assert (delivery.sent, delivery.attempts) == (True, 2)


def test_a_dead_webhook_never_raises_and_says_why():
    url = f"http://127.0.0.1:{free_port()}/hooks/T1/B1/secret"
    delivery = send(MESSAGE, url, sleep=no_sleep)
    assert (delivery.sent, delivery.attempts, delivery.status, delivery.channel) == (
        False, 2, None, f"webhook http://127.0.0.1:{url.split(':')[2].split('/')[0]}")
    assert delivery.error.startswith("ConnectionError")
    assert delivery.describe().startswith("not delivered to webhook http://127.0.0.1:")


def test_notify_logs_without_a_url_and_records_every_delivery(tmp_path):
    storage, logged, errors = Storage(tmp_path), [], []
    notify(MESSAGE, None, logged.append, errors.append, storage)
    notify(MESSAGE, f"http://127.0.0.1:{free_port()}/x", logged.append, errors.append, storage, sleep=no_sleep)
    assert logged == [f"notification (no LAKEHOUSE_WEBHOOK_URL set, logged only):\n{MESSAGE.text()}"]
    assert len(errors) == 1 and errors[0].startswith("notification not delivered to webhook http://127.0.0.1:")
    log = DeliveryLog(storage)
    assert [(e["channel"][:7], e["sent"], e["title"]) for e in log.load()] == [
        ("log", False, MESSAGE.title), ("webhook", False, MESSAGE.title)]
    assert log.last()["channel"].startswith("webhook")


def test_redact_keeps_only_scheme_and_host():
    assert redact("https://user:pw@hooks.slack.com/services/T0/B0/XYZ?x=1") == "https://hooks.slack.com"


@pytest.mark.parametrize("name, value, message", [
    # The webhook's path is its token: the message shows the scheme and host at most.
    ("LAKEHOUSE_WEBHOOK_URL", "hooks.slack.com/services/x", "LAKEHOUSE_WEBHOOK_URL='<not a URL, value hidden>' must be an http"),
    ("LAKEHOUSE_WEBHOOK_URL", "ftp://example.org/hook", "LAKEHOUSE_WEBHOOK_URL='ftp://example.org/...' must be an http"),
    ("LAKEHOUSE_WEBHOOK_URL", "http://127.0.0.1:notaport/x", "LAKEHOUSE_WEBHOOK_URL='http://127.0.0.1:notaport/...' has an invalid port"),
    ("LAKEHOUSE_UI_URL", "localhost:3000", "LAKEHOUSE_UI_URL='localhost:3000' must be an http"),
    ("LAKEHOUSE_UI_URL", "http://", "LAKEHOUSE_UI_URL='http://' must be an http"),
])
def test_malformed_urls_are_config_errors_naming_the_variable(name, value, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        Settings.from_env({name: value})


def test_url_settings_are_read():
    s = Settings.from_env({"LAKEHOUSE_WEBHOOK_URL": " https://hooks.slack.com/services/T0/B0/X ",
                           "LAKEHOUSE_UI_URL": "http://127.0.0.1:3000/"})
    assert (s.webhook_url, s.ui_url) == ("https://hooks.slack.com/services/T0/B0/X", "http://127.0.0.1:3000")
    assert (Settings.from_env({}).webhook_url, Settings.from_env({}).ui_url) == (None, None)
