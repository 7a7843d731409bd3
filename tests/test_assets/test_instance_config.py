import shutil

from dagster import DagsterInstance

from assets.raw import EXCHANGE_POOL, raw_ohlcv
from cli.instance import PROJECT_ROOT


def test_project_dagster_yaml_loads_and_serialises_exchange_calls(tmp_path):
    shutil.copy(PROJECT_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    instance = DagsterInstance.from_config(str(tmp_path))
    try:
        config = instance.get_concurrency_config()
        assert config.pool_config.default_pool_limit == 1
        assert config.run_queue_config.max_concurrent_runs == 4
    finally:
        instance.dispose()
    assert raw_ohlcv.op.pool == EXCHANGE_POOL == "exchange"
