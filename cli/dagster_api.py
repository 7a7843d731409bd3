"""A running Dagster deployment, seen through its GraphQL API: the one place the CLI talks HTTP to Dagster.

`DagsterAPI(url).query(text, variables)` returns the `data` dict or raises one of the exceptions below, so callers
never look at HTTP status codes or GraphQL error lists. The typed helpers (launch, poll and retry backfills, list
runs) are thin wrappers over `query`. No Dagster import: this module only needs `requests`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable
from urllib.parse import urlsplit

import requests

from lakehouse.liveness import PoolState

DEFAULT_TIMEOUT_S = 30.0

# Statuses after which a backfill changes no more (COMPLETED is the pre-1.8 spelling of COMPLETED_SUCCESS).
BACKFILL_FINISHED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
BACKFILL_SUCCEEDED = {"COMPLETED", "COMPLETED_SUCCESS"}
RUN_FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


class DagsterAPIError(Exception):
    """Anything that kept a request to the deployment from giving an answer."""


class InvalidURL(DagsterAPIError, ValueError):
    """The URL is not an http(s) URL; nothing was sent."""


class DeploymentUnreachable(DagsterAPIError):
    """No HTTP answer at all: connection refused, DNS failure, timeout."""


class DeploymentRejected(DagsterAPIError):
    """The deployment answered, but not with what was asked: HTTP error, GraphQL error, PythonError, or a typed
    error result such as PartitionKeysNotFoundError. `kind` is the GraphQL __typename or "HTTP 502" etc."""

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        self.kind = kind


class NotFound(DeploymentRejected):
    """The backfill or run asked for does not exist on this deployment."""


def normalize_url(url: str) -> str:
    url = (url or "").strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidURL(f"{url!r} is not a Dagster webserver URL; expected e.g. http://127.0.0.1:3000")
    return url


@dataclasses.dataclass
class AssetCounts:
    asset: str
    targeted: int = 0
    in_progress: int = 0
    materialized: int = 0
    failed: int = 0


@dataclasses.dataclass
class Materialization:
    asset: str
    partition: str | None
    metadata: dict[str, float]


@dataclasses.dataclass
class RunInfo:
    run_id: str
    status: str
    tags: dict[str, str]
    created: float | None = None
    started: float | None = None
    ended: float | None = None
    job: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in RUN_FINISHED


@dataclasses.dataclass
class Backfill:
    backfill_id: str
    status: str
    created: float | None
    ended: float | None
    assets: list[AssetCounts]
    error: str | None = None
    title: str | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in BACKFILL_FINISHED

    @property
    def succeeded(self) -> bool:
        return self.status in BACKFILL_SUCCEEDED

    def partitioned(self) -> list[AssetCounts]:
        return [a for a in self.assets if a.targeted]


class DagsterAPI:
    """`DagsterAPI("http://127.0.0.1:3000").query("{ version }")` -> {"version": "1.13.27"}."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT_S, session: requests.Session | None = None):
        self.url = normalize_url(url)
        self.endpoint = f"{self.url}/graphql"
        self.timeout = timeout
        self.session = session or requests.Session()

    # transport -------------------------------------------------------------------------------------
    def query(self, gql: str, variables: dict | None = None) -> dict:
        try:
            response = self.session.post(self.endpoint, json={"query": gql, "variables": variables or {}},
                                         timeout=self.timeout)
        except requests.Timeout:
            raise DeploymentUnreachable(f"no answer from {self.url} within {self.timeout:g}s") from None
        except requests.RequestException as exc:
            raise DeploymentUnreachable(f"cannot reach {self.url}: {_short(exc)}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise DeploymentRejected(
                f"{self.endpoint} answered HTTP {response.status_code} without GraphQL JSON"
                f" ({response.text[:120].strip()!r}); is this a Dagster webserver URL?",
                kind=f"HTTP {response.status_code}")
        if body.get("errors"):
            messages = "; ".join(str(e.get("message", e)) for e in body["errors"][:3])
            raise DeploymentRejected(f"GraphQL error from {self.url}: {messages}", kind="GraphQLError")
        if response.status_code >= 400 or body.get("data") is None:
            raise DeploymentRejected(f"{self.endpoint} answered HTTP {response.status_code}",
                                     kind=f"HTTP {response.status_code}")
        return body["data"]

    def close(self) -> None:
        self.session.close()

    # links -----------------------------------------------------------------------------------------
    def backfill_link(self, backfill_id: str) -> str:
        return f"{self.url}/runs/b/{backfill_id}"

    def run_link(self, run_id: str) -> str:
        return f"{self.url}/runs/{run_id}"

    # typed calls -----------------------------------------------------------------------------------
    def version(self) -> str:
        return self.query("{ version }")["version"]

    def daemon_healthy(self, daemon_type: str = "BACKFILL") -> bool | None:
        """Whether the deployment's daemon of this type heartbeats without errors; None if it is not required."""
        data = self.query(_DAEMON_HEALTH, {"type": daemon_type})
        status = data["instance"]["daemonHealth"]["daemonStatus"]
        return bool(status["healthy"]) if status["required"] else None

    def partition_keys_by_dimension(self, asset: str) -> dict[str, list[str]]:
        """The asset's partition keys per dimension, e.g. {"date": [...], "symbol": ["BTC/USDT", ...]}."""
        data = self.query(_ASSET_PARTITIONS, {"key": {"path": asset.split("/")}})
        node = _expect(data["assetNodeOrError"], "AssetNode", what=f"asset {asset}")
        return {d["name"]: d["partitionKeys"] for d in node["partitionKeysByDimension"]}

    def launch_backfill(self, assets: Iterable[str], partition_names: Iterable[str] | None,
                        tags: dict[str, str] | None = None, title: str | None = None,
                        description: str | None = None) -> str:
        """An asset backfill of `partition_names` (None: unpartitioned assets only); returns its id."""
        params: dict[str, Any] = {
            "assetSelection": [{"path": a.split("/")} for a in assets],
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        }
        if partition_names is not None:
            params["partitionNames"] = list(partition_names)
        if title:
            params["title"] = title
        if description:
            params["description"] = description
        data = self.query(_LAUNCH_BACKFILL, {"params": params})
        return _expect(data["launchPartitionBackfill"], "LaunchBackfillSuccess", what="backfill")["backfillId"]

    def retry_backfill(self, backfill_id: str, strategy: str = "FROM_FAILURE") -> str:
        """A new backfill of what `backfill_id` did not materialize (FROM_FAILURE); returns its id."""
        data = self.query(_RETRY_BACKFILL, {"params": {"parentRunId": backfill_id, "strategy": strategy}})
        return _expect(data["reexecutePartitionBackfill"], "LaunchBackfillSuccess",
                       what=f"backfill {backfill_id}")["backfillId"]

    def backfill(self, backfill_id: str) -> Backfill:
        data = self.query(_BACKFILL, {"id": backfill_id})
        b = _expect(data["partitionBackfillOrError"], "PartitionBackfill", what=f"backfill {backfill_id}")
        return _backfill(b)

    def backfill_runs(self, backfill_id: str, limit: int = 1000) -> list[RunInfo]:
        data = self.query(_BACKFILL_RUNS, {"id": backfill_id, "limit": limit})
        b = _expect(data["partitionBackfillOrError"], "PartitionBackfill", what=f"backfill {backfill_id}")
        return [_run(r) for r in b["runs"]]

    def backfills(self, limit: int = 20) -> list[Backfill]:
        data = self.query(_BACKFILLS, {"limit": limit})
        result = _expect(data["partitionBackfillsOrError"], "PartitionBackfills", what="backfills")
        return [_backfill(b) for b in result["results"]]

    def runs(self, limit: int = 20, statuses: list[str] | None = None, tags: dict[str, str] | None = None,
             run_ids: list[str] | None = None) -> list[RunInfo]:
        runs_filter: dict[str, Any] = {"runIds": run_ids} if run_ids else {}
        if statuses:
            runs_filter["statuses"] = statuses
        if tags:
            runs_filter["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        data = self.query(_RUNS, {"limit": limit, "filter": runs_filter})
        result = _expect(data["runsOrError"], "Runs", what="runs")
        return [_run(r) for r in result["results"]]

    def pools(self) -> list[PoolState]:
        """Every concurrency pool: its slots, who claimed them and the steps queued for them."""
        data = self.query(_POOLS)
        return [PoolState(p["concurrencyKey"], p["slotCount"], tuple((c["runId"], c["stepKey"]) for c in p["claimedSlots"]),
                          tuple((q["runId"], q["stepKey"], q["enqueuedTimestamp"], q.get("assignedTimestamp"))
                                for q in p["pendingSteps"]))
                for p in data["instance"]["concurrencyLimits"]]

    def run_pools(self, run_ids: list[str]) -> dict[str, list[str]]:
        """The pools each run needs to start (its root steps'), else every pool it uses."""
        data = self.query(_RUN_POOLS, {"ids": run_ids})
        result = _expect(data["runsOrError"], "Runs", what="runs")
        return {r["runId"]: list(r.get("rootConcurrencyKeys") or r.get("allPools") or []) for r in result["results"]}

    def run_errors(self, run_id: str) -> list[str]:
        """Why a run failed, one line per failed step (the innermost cause of each), or the run's own failure."""
        steps: list[str] = []
        run_failure: list[str] = []
        cursor = None
        while True:
            data = self.query(_RUN_LOGS, {"runId": run_id, "cursor": cursor})
            conn = _expect(data["logsForRun"], "EventConnection", what=f"run {run_id}")
            for e in conn["events"]:
                kind = e.get("__typename")
                if kind == "ExecutionStepFailureEvent":
                    steps.append(f"{e.get('stepKey')}: {_innermost(e.get('error'))}")
                elif kind == "RunFailureEvent":
                    msg = _innermost(e["error"]) if e.get("error") else e.get("message")
                    if msg:
                        run_failure.append(msg)
            if not conn.get("hasMore"):
                break
            cursor = conn["cursor"]
        return steps or run_failure

    def run_materializations(self, run_id: str) -> list[Materialization]:
        """Every materialization a run recorded, with its partition and numeric metadata."""
        data = self.query(_RUN_MATERIALIZATIONS, {"runId": run_id})
        run = _expect(data["runOrError"], "Run", what=f"run {run_id}")
        out = []
        for m in run["assetMaterializations"]:
            numbers = {e["label"]: e.get("intValue", e.get("floatValue")) for e in m["metadataEntries"]
                       if e.get("intValue", e.get("floatValue")) is not None}
            out.append(Materialization("/".join(m["assetKey"]["path"]), m.get("partition"), numbers))
        return out

    def targeted_partitions(self, backfill_id: str, asset: str) -> list[str]:
        """The partition keys a backfill targets for one asset (ranges expanded by the deployment)."""
        data = self.query(_BACKFILL_TARGET, {"id": backfill_id, "key": {"path": asset.split("/")}})
        b = _expect(data["partitionBackfillOrError"], "PartitionBackfill", what=f"backfill {backfill_id}")
        target = b.get("partitionsTargetedForAssetKey") or {}
        keys = list(target.get("partitionKeys") or [])
        # Time-window assets come back as ranges; ours (symbol x day) come back as keys.
        keys.extend(f"{r['start']}...{r['end']}" for r in target.get("ranges") or [])
        return keys


# helpers ---------------------------------------------------------------------------------------------
def _short(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "No route to host", "timed out"):
        if marker in text:
            return marker.lower()
    return text[:200]


def _expect(obj: dict | None, typename: str, what: str) -> dict:
    if obj is None:
        raise DeploymentRejected(f"the deployment returned nothing for {what}")
    kind = obj.get("__typename")
    if kind == typename:
        return obj
    message = obj.get("message") or kind
    if kind == "PythonError":
        message = _innermost(obj)
    if kind in ("BackfillNotFoundError", "RunNotFoundError", "AssetNotFoundError"):
        raise NotFound(f"{what}: {message}", kind=kind)
    if kind == "PartitionKeysNotFoundError":
        keys = obj.get("partitionKeys") or []
        message = f"unknown partition(s) {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}"
    raise DeploymentRejected(f"the deployment refused {what}: {message}", kind=kind)


def _innermost(error: dict | None) -> str:
    if not error:
        return "failed"
    while error.get("cause"):
        error = error["cause"]
    return (error.get("message") or "failed").strip()


def _tags(raw) -> dict[str, str]:
    return {t["key"]: t["value"] for t in raw or []}


def _run(r: dict) -> RunInfo:
    return RunInfo(run_id=r["runId"], status=r["status"], tags=_tags(r.get("tags")), created=r.get("creationTime"),
                   started=r.get("startTime"), ended=r.get("endTime"), job=r.get("jobName"))


def _backfill(b: dict) -> Backfill:
    assets = []
    for s in (b.get("assetBackfillData") or {}).get("assetBackfillStatuses") or []:
        name = "/".join(s["assetKey"]["path"])
        if s["__typename"] == "AssetPartitionsStatusCounts":
            assets.append(AssetCounts(name, s["numPartitionsTargeted"], s["numPartitionsInProgress"],
                                      s["numPartitionsMaterialized"], s["numPartitionsFailed"]))
        else:
            assets.append(AssetCounts(name, 0, int(bool(s["inProgress"])), int(bool(s["materialized"])),
                                      int(bool(s["failed"]))))
    error = _innermost(b["error"]) if b.get("error") else None
    return Backfill(backfill_id=b["id"], status=b["status"], created=b.get("timestamp"), ended=b.get("endTimestamp"),
                    assets=assets, error=error, title=b.get("title"), tags=_tags(b.get("tags")))


_ERROR_FIELDS = """
    __typename
    ... on Error { message }
    ... on PythonError { message cause { message cause { message cause { message } } } }
"""

_ASSET_PARTITIONS = """
query AssetPartitions($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode { partitionKeysByDimension { name partitionKeys } }
    ... on AssetNotFoundError { message }
  }
}"""

_LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionKeysNotFoundError { partitionKeys }
    %s
  }
}""" % _ERROR_FIELDS

_RETRY_BACKFILL = """
mutation Retry($params: ReexecutionParams!) {
  reexecutePartitionBackfill(reexecutionParams: $params) {
    ... on LaunchBackfillSuccess { backfillId }
    %s
  }
}""" % _ERROR_FIELDS

_BACKFILL_FIELDS = """
    id status timestamp endTimestamp title
    tags { key value }
    error { message cause { message cause { message } } }
    assetBackfillData {
      assetBackfillStatuses {
        __typename
        ... on AssetPartitionsStatusCounts {
          assetKey { path } numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed
        }
        ... on UnpartitionedAssetStatus { assetKey { path } inProgress materialized failed }
      }
    }
"""

_RUN_FIELDS = "runId status creationTime startTime endTime jobName tags { key value }"

_BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { %s }
    %s
  }
}""" % (_BACKFILL_FIELDS, _ERROR_FIELDS)

_BACKFILL_RUNS = """
query BackfillRuns($id: String!, $limit: Int) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { runs(limit: $limit) { %s } }
    %s
  }
}""" % (_RUN_FIELDS, _ERROR_FIELDS)

_BACKFILLS = """
query Backfills($limit: Int) {
  partitionBackfillsOrError(limit: $limit) {
    __typename
    ... on PartitionBackfills { results { %s } }
    %s
  }
}""" % (_BACKFILL_FIELDS, _ERROR_FIELDS)

_RUNS = """
query Runs($limit: Int, $filter: RunsFilter) {
  runsOrError(limit: $limit, filter: $filter) {
    __typename
    ... on Runs { results { %s } }
    %s
  }
}""" % (_RUN_FIELDS, _ERROR_FIELDS)

_POOLS = """
query Pools {
  instance {
    concurrencyLimits {
      concurrencyKey slotCount claimedSlots { runId stepKey }
      pendingSteps { runId stepKey enqueuedTimestamp assignedTimestamp }
    }
  }
}"""

_RUN_POOLS = """
query RunPools($ids: [String!]) {
  runsOrError(filter: {runIds: $ids}) {
    __typename
    ... on Runs { results { runId rootConcurrencyKeys allPools } }
    %s
  }
}""" % _ERROR_FIELDS

_RUN_LOGS = """
query RunLogs($runId: ID!, $cursor: String) {
  logsForRun(runId: $runId, afterCursor: $cursor) {
    __typename
    ... on EventConnection {
      cursor hasMore
      events {
        __typename
        ... on ExecutionStepFailureEvent { stepKey error { message cause { message cause { message cause { message } } } } }
        ... on RunFailureEvent { message error { message cause { message cause { message } } } }
      }
    }
    %s
  }
}""" % _ERROR_FIELDS

_RUN_MATERIALIZATIONS = """
query RunMaterializations($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      assetMaterializations {
        assetKey { path } partition
        metadataEntries { label ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue } }
      }
    }
    %s
  }
}""" % _ERROR_FIELDS

_BACKFILL_TARGET = """
query BackfillTarget($id: String!, $key: AssetKeyInput!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { partitionsTargetedForAssetKey(assetKey: $key) { partitionKeys ranges { start end } } }
    %s
  }
}""" % _ERROR_FIELDS

_DAEMON_HEALTH = """
query DaemonHealth($type: String!) {
  instance { daemonHealth { daemonStatus(daemonType: $type) { required healthy } } }
}"""
