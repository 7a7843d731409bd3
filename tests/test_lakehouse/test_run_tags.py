import datetime as dt

from assets.partitions import partition_key
from lakehouse.run_tags import RunGroup, covered_partitions, describe_partitions, group_runs, range_tags

D1, D3 = dt.date(2024, 3, 1), dt.date(2024, 3, 3)


def test_range_tags_use_dagsters_own_key_format():
    tags = range_tags("BTC/USDT", D1, D3)
    assert list(tags.values()) == [str(partition_key("BTC/USDT", D1)), str(partition_key("BTC/USDT", D3))]


def test_a_range_run_covers_every_day_between_its_corners():
    assert covered_partitions(range_tags("BTC/USDT", D1, D3)) == [
        ("BTC/USDT", D1), ("BTC/USDT", dt.date(2024, 3, 2)), ("BTC/USDT", D3)]
    assert describe_partitions(range_tags("BTC/USDT", D1, D3)) == "BTC/USDT 2024-03-01..2024-03-03"


def test_a_range_across_symbols_follows_the_partition_order():
    tags = {"dagster/asset_partition_range_start": "2024-03-01|AAA/USDT",
            "dagster/asset_partition_range_end": "2024-03-01|CCC/USDT"}
    assert covered_partitions(tags, ["AAA/USDT", "BBB/USDT", "CCC/USDT"]) == [
        ("AAA/USDT", D1), ("BBB/USDT", D1), ("CCC/USDT", D1)]
    assert covered_partitions(tags) == [("AAA/USDT", D1), ("CCC/USDT", D1)]
    assert describe_partitions(tags) == "AAA/USDT..CCC/USDT 2024-03-01"


def test_single_partition_and_foreign_tags():
    assert covered_partitions({"dagster/partition": "2024-03-01|BTC/USDT"}) == [("BTC/USDT", D1)]
    assert covered_partitions({"dagster/partition": "2024-03-01"}) is None
    assert covered_partitions({"dagster/partition": "x|BTC/USDT"}) is None
    assert describe_partitions({"dagster/partition": "2024-03-01"}) == "2024-03-01"
    assert describe_partitions({}) is None


D2, D9 = dt.date(2024, 3, 2), dt.date(2024, 3, 9)
ORDER = ["AAA/USDT", "BBB/USDT", "CCC/USDT", "DDD/USDT"]


def test_neighbours_with_the_same_days_share_a_run_whose_corners_cover_exactly_them():
    groups = group_runs({"AAA/USDT": [(D1, D3)], "BBB/USDT": [(D1, D3)], "CCC/USDT": [(D1, D3)]}, ORDER, 400)
    assert groups == [RunGroup(("AAA/USDT", "BBB/USDT", "CCC/USDT"), D1, D3)]
    assert covered_partitions(groups[0].tags(), ORDER) == [(s, d) for s in ORDER[:3] for d in (D1, D2, D3)]


def test_only_neighbours_in_the_partition_order_with_identical_days_share_a_run():
    groups = group_runs({"DDD/USDT": [(D1, D3)], "AAA/USDT": [(D1, D3)], "CCC/USDT": [(D1, D3)],
                         "BBB/USDT": [(D1, D2), (D9, D9)], "NEW/USDT": [(D1, D3)]}, ORDER, 400)
    assert groups == [
        RunGroup(("AAA/USDT",), D1, D3),  # BBB has other days: AAA..CCC would cover BBB's too
        RunGroup(("BBB/USDT",), D1, D2), RunGroup(("BBB/USDT",), D9, D9),
        RunGroup(("CCC/USDT", "DDD/USDT"), D1, D3),
        RunGroup(("NEW/USDT",), D1, D3),  # not in the order (yet): alone
    ]


def test_a_run_holds_at_most_max_partitions_and_always_one_symbol():
    ranges = {s: [(D1, D3)] for s in ORDER}
    assert [g.symbols for g in group_runs(ranges, ORDER, 6)] == [("AAA/USDT", "BBB/USDT"), ("CCC/USDT", "DDD/USDT")]
    assert [g.symbols for g in group_runs(ranges, ORDER, 2)] == [(s,) for s in ORDER]


def test_a_symbol_asked_to_run_alone_neither_joins_nor_bridges_its_neighbours():
    ranges = {s: [(D1, D3)] for s in ORDER}
    assert [g.symbols for g in group_runs(ranges, ORDER, alone={"BBB/USDT"})] == [
        ("AAA/USDT",), ("CCC/USDT", "DDD/USDT"), ("BBB/USDT",)]
