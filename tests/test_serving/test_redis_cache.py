"""The shared Redis cache (LAKEHOUSE_REDIS_URL) against the Redis on loopback: hits across app instances, a miss
after a partition is rewritten, and a dead Redis that only costs the cache."""

from __future__ import annotations

import uuid

import polars as pl
import pytest
from fastapi.testclient import TestClient

from lakehouse.schema import CLEAN_BARS
from lakehouse.storage import Storage
from serving.cache import KEY_PREFIX
from serving.settings import ApiSettings

from helpers import free_port, service_reachable
from serving_lakehouse import LAST_DAY, make_app

pytestmark = [pytest.mark.services,
              pytest.mark.skipif(not service_reachable("127.0.0.1", 6379), reason="no Redis on 127.0.0.1:6379")]


def test_two_api_processes_share_hot_reads_and_a_rewrite_invalidates_them(lake):
    import redis

    root, inst = lake
    db = 15
    url = f"redis://127.0.0.1:6379/{db}"
    r = redis.Redis.from_url(url)
    r.set(KEY_PREFIX + "probe-" + uuid.uuid4().hex, b"x", ex=5)
    settings = ApiSettings(redis_url=url)
    with TestClient(make_app(root, inst, api_settings=settings)) as a, \
            TestClient(make_app(root, inst, api_settings=settings)) as b:
        assert a.get("/v1/health").json()["redis"] == "ok"
        today = "/v1/bars/BTC-USDT?interval=5m"
        first = a.get(today)
        assert first.headers["x-cache"] in ("miss", "hit")  # a previous test run may have left the entry
        shared = b.get(today)  # another process: served from Redis
        assert shared.headers["x-cache"] == "hit" and shared.content == first.content
        assert r.ttl(KEY_PREFIX + shared.headers["etag"].strip('"')) > 0  # entries age out on their own
        assert b.get("/v1/scores?format=arrow").status_code == 200
        assert a.get("/v1/scores?format=arrow").headers["x-cache"] == "hit"

        storage = Storage(root)
        df = storage.read_partition(CLEAN_BARS, "simulated", "BTC/USDT", LAST_DAY)
        storage.write_partition(CLEAN_BARS, "simulated", "BTC/USDT", LAST_DAY, df.with_columns(pl.col("volume") * 2))
        after = b.get(today)
        assert after.headers["x-cache"] == "miss" and after.headers["etag"] != first.headers["etag"]
        assert after.json()[0]["volume"] == pytest.approx(2 * first.json()[0]["volume"])
        assert a.get(today).headers["x-cache"] == "hit"


def test_a_dead_redis_costs_only_the_cache(built):
    root, inst = built
    settings = ApiSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    with TestClient(make_app(root, inst, api_settings=settings)) as c:
        assert c.get("/v1/health").json()["redis"] == "unreachable (serving uncached)"
        first, second = c.get("/v1/scores"), c.get("/v1/scores")
        assert first.status_code == second.status_code == 200 and len(second.json()) == 2
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")  # this process's own tier


def test_redis_url_is_validated_without_echoing_it():
    from lakehouse.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        ApiSettings.from_env({"LAKEHOUSE_REDIS_URL": "http://:hunter2@127.0.0.1:6379"})
    assert "hunter2" not in str(err.value) and "redis://127.0.0.1:6379/0" in str(err.value)
