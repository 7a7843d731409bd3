"""`lakehouse health`: gather what the Dagster instance (local) or deployment (--url, GraphQL) knows, judge it
with lakehouse.health, print one line per component and exit 0 ok, 1 degraded, 2 down."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time

import click

from lakehouse import health as h
from lakehouse.config import Settings
from lakehouse.notify import DeliveryLog
from lakehouse.storage import Storage

from .common import UsageFailure, settings

# sensors.repair.REPAIR_SENSOR_NAME; importing it would load every asset module, which --url does not need.
REPAIR_SENSOR_NAME = "lakehouse_repair"


def _short(exc: BaseException) -> str:
    # SQLAlchemy appends the statement and a help link; the first part says what is wrong.
    text = " ".join(str(exc).split("[SQL:")[0].split()) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text[:240]}"


def _common(s: Settings) -> list[h.Component]:
    """What this machine checks itself, in either mode: the exchange, the disk, the notification channel."""
    return [
        h.exchange_component(s),
        h.disk_component(s.root_location),
        h.notifications_component(s, DeliveryLog(Storage(s.root), s.webhook_url).last()),
    ]


# local: the instance under DAGSTER_HOME ---------------------------------------------------------------
def _local_sensor(instance, s: Settings, now: float, ticking: bool) -> h.Component:
    from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType

    try:
        from .common import load_defs

        sensor_def = load_defs().get_repository_def().get_sensor_def(REPAIR_SENSOR_NAME)
        default, interval = sensor_def.default_status.value, sensor_def.minimum_interval_seconds or s.repair_interval_s
    except Exception:  # a code location that does not load, or a renamed sensor: judged as "not defined"
        default, interval = None, s.repair_interval_s
    states = [st for st in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
              if st.name == REPAIR_SENSOR_NAME]
    best_status, best_ticks = default, []
    for state in states:
        ticks = [h.Tick(t.status.value, t.timestamp, t.error.message if t.error else None, t.skip_reason,
                        len(t.run_ids)) for t in instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=3)]
        if best_ticks and (not ticks or ticks[0].timestamp <= best_ticks[0].timestamp):
            continue
        stored = state.status
        status = ("STOPPED" if stored == InstigatorStatus.STOPPED else
                  default if stored == InstigatorStatus.DECLARED_IN_CODE else "RUNNING")
        best_status, best_ticks = status, ticks
    return h.sensor_component(REPAIR_SENSOR_NAME, best_status, best_ticks, interval, now, ticking)


def _local_runs(instance, now: float) -> h.Component:
    from dagster import DagsterRunStatus, RunsFilter

    since = dt.datetime.fromtimestamp(now - h.RUNS_WINDOW_HOURS * 3600, dt.timezone.utc)

    def count(status):
        return instance.get_runs_count(RunsFilter(statuses=[status], updated_after=since))

    failed = instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.FAILURE], updated_after=since), limit=1)
    return h.runs_component(count(DagsterRunStatus.SUCCESS), count(DagsterRunStatus.FAILURE),
                            count(DagsterRunStatus.CANCELED), failed[0].dagster_run.run_id if failed else None)


def _local_stuck(instance) -> h.Component:
    from assets.run_guard import dead_runs, leaked_slots

    return h.stuck_runs_component([d.as_dict() for d in dead_runs(instance)],
                                  [x.as_dict() for x in leaked_slots(instance)])


def local_health(s: Settings, now: float) -> tuple[list[h.Component], str]:
    from .instance import ensure_dagster_home, get_instance

    home = str(ensure_dagster_home())
    try:
        instance = get_instance()
        runs = instance.get_runs_count()
        statuses = instance.get_daemon_statuses()
    except Exception as exc:  # noqa: BLE001  (whatever keeps the storage from answering is the finding)
        why = "the instance storage does not answer"
        exchange, disk, notifications = _common(s)
        return [h.storage_component(_short(exc), f"instance storage in {home}"), h.unknown(h.DAEMON, why),
                h.unknown(h.REPAIR_SENSOR, why), exchange, disk, h.unknown(h.RUNS, why),
                h.unknown(h.STUCK_RUNS, why), notifications], home
    beats = [h.DaemonBeat(st.daemon_type, st.last_heartbeat.timestamp if st.last_heartbeat else None,
                          tuple(e.message for e in (st.last_heartbeat.errors or [])) if st.last_heartbeat else ())
             for st in statuses.values() if st.required]
    storage = h.storage_component(None, f"{type(instance.run_storage).__name__} in {home}: {runs} runs")
    ticking = h.daemon_alive(beats, now)
    exchange, disk, notifications = _common(s)
    return [storage, h.daemon_component(beats, now, local=True), _local_sensor(instance, s, now, ticking), exchange,
            disk, _local_runs(instance, now), _local_stuck(instance), notifications], home


# remote: a deployment's GraphQL API ---------------------------------------------------------------------
HEALTH_QUERY = """
query Health($since: Float!) {
  version
  instance {
    daemonHealth { allDaemonStatuses { daemonType required lastHeartbeatTime lastHeartbeatErrors { message } } }
    concurrencyLimits { concurrencyKey claimedSlots { runId stepKey } pendingSteps { runId stepKey } }
  }
  unfinished: runsOrError(filter: {statuses: [NOT_STARTED, STARTING, STARTED, CANCELING]}) {
    ... on Runs { results { runId status jobName creationTime startTime tags { key value } } }
  }
  workspaceOrError {
    __typename
    ... on Workspace { locationEntries { name locationOrLoadError { __typename ... on PythonError { message } } } }
  }
  repositoriesOrError {
    __typename
    ... on RepositoryConnection {
      nodes {
        name
        sensors {
          name minIntervalSeconds
          sensorState { status ticks(limit: 3) { status timestamp skipReason runIds error { message } } }
        }
      }
    }
    ... on PythonError { message }
  }
  succeeded: runsOrError(filter: {statuses: [SUCCESS], updatedAfter: $since}) { ... on Runs { count } }
  failed: runsOrError(filter: {statuses: [FAILURE], updatedAfter: $since}, limit: 1) {
    ... on Runs { count results { runId } }
  }
  canceled: runsOrError(filter: {statuses: [CANCELED], updatedAfter: $since}) { ... on Runs { count } }
}"""


def _remote_sensor(data: dict, now: float, ticking: bool, s: Settings) -> h.Component:
    sensors = [sensor for repo in (data["repositoriesOrError"].get("nodes") or []) for sensor in repo["sensors"]
               if sensor["name"] == REPAIR_SENSOR_NAME]
    if not sensors:
        broken = [f"{e['name']}: {e['locationOrLoadError'].get('message', '')}"
                  for e in (data.get("workspaceOrError") or {}).get("locationEntries") or []
                  if (e.get("locationOrLoadError") or {}).get("__typename") == "PythonError"]
        if broken:
            return h.Component(h.REPAIR_SENSOR, h.DEGRADED, f"code location failed to load: {h.one_line(broken[0], 240)}")
        return h.sensor_component(REPAIR_SENSOR_NAME, None, [], s.repair_interval_s, now, ticking)
    sensor = sensors[0]
    state = sensor["sensorState"]
    ticks = [h.Tick(t["status"], t["timestamp"], (t.get("error") or {}).get("message"), t.get("skipReason"),
                    len(t.get("runIds") or [])) for t in state["ticks"]]
    status = "STOPPED" if state["status"] == "STOPPED" else "RUNNING"
    return h.sensor_component(REPAIR_SENSOR_NAME, status, ticks, sensor["minIntervalSeconds"], now, ticking)


RUN_STATUSES_QUERY = """
query RunStatuses($ids: [String!]) {
  runsOrError(filter: {runIds: $ids}) { ... on Runs { results { runId status } } }
}"""


def _remote_stuck(api, data: dict) -> h.Component:
    """stuck_runs from the deployment's view: its unfinished runs whose process (on this host) is gone, and
    pool slots held by its finished runs. A run started on another host cannot be checked from here."""
    from lakehouse.liveness import DEAD, ELSEWHERE, DeadRun, holdings, leaked, process_state, run_label

    from .dagster_api import DeploymentRejected, DeploymentUnreachable

    dead, elsewhere = [], 0
    for run in (data.get("unfinished") or {}).get("results") or []:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        state = process_state(tags)
        elsewhere += state == ELSEWHERE
        if state == DEAD:
            started = run.get("startTime") or run.get("creationTime")
            at = dt.datetime.fromtimestamp(started, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if started else None
            dead.append(DeadRun(run["runId"], run["status"], run_label(tags, run["jobName"]), at).as_dict())
    held = [x for pool in data["instance"].get("concurrencyLimits") or []
            for x in holdings(pool["concurrencyKey"], [(c["runId"], c["stepKey"]) for c in pool["claimedSlots"]],
                              [(p["runId"], p["stepKey"]) for p in pool["pendingSteps"]])]
    statuses = {}
    if held:
        try:
            answer = api.query(RUN_STATUSES_QUERY, {"ids": sorted({x[1] for x in held})})
        except (DeploymentUnreachable, DeploymentRejected) as exc:
            return h.unknown(h.STUCK_RUNS, f"the run statuses did not load: {h.one_line(str(exc), 160)}")
        statuses = {r["runId"]: r["status"] for r in (answer["runsOrError"] or {}).get("results") or []}
    return h.stuck_runs_component(dead, [x.as_dict() for x in leaked(held, statuses)], elsewhere)


def remote_health(s: Settings, url: str, timeout: float, now: float) -> tuple[list[h.Component], str]:
    from .dagster_api import DagsterAPI, DeploymentRejected, DeploymentUnreachable, InvalidURL

    try:
        api = DagsterAPI(url, timeout=timeout)
    except InvalidURL as exc:
        raise UsageFailure(str(exc)) from None
    try:
        data = api.query(HEALTH_QUERY, {"since": now - h.RUNS_WINDOW_HOURS * 3600})
    except (DeploymentUnreachable, DeploymentRejected) as exc:
        api.close()
        why = f"{api.url} does not answer"
        exchange, disk, notifications = _common(s)
        return [h.storage_component(str(exc), f"deployment {api.url}"), h.unknown(h.DAEMON, why),
                h.unknown(h.REPAIR_SENSOR, why), exchange, disk, h.unknown(h.RUNS, why),
                h.unknown(h.STUCK_RUNS, why), notifications], api.url
    try:
        stuck = _remote_stuck(api, data)
    finally:
        api.close()
    beats = [h.DaemonBeat(d["daemonType"], d["lastHeartbeatTime"], tuple(e["message"] for e in d["lastHeartbeatErrors"]))
             for d in data["instance"]["daemonHealth"]["allDaemonStatuses"] if d["required"]]
    ticking = h.daemon_alive(beats, now)
    failed = data["failed"] or {}
    runs = h.runs_component((data["succeeded"] or {}).get("count", 0), failed.get("count", 0),
                            (data["canceled"] or {}).get("count", 0),
                            (failed.get("results") or [{}])[0].get("runId"))
    storage = h.storage_component(None, f"deployment {api.url} answers (Dagster {data['version']})")
    exchange, disk, notifications = _common(s)
    return [storage, h.daemon_component(beats, now, local=False), _remote_sensor(data, now, ticking, s), exchange,
            disk, runs, stuck, notifications], api.url


@click.command()
@click.option("--url", envvar="DAGSTER_URL", default=None,
              help="A running deployment's webserver (env DAGSTER_URL); default: the local instance in DAGSTER_HOME.")
@click.option("--timeout", default=10.0, show_default=True, type=float, help="Seconds to wait for the deployment.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of one line per component.")
def health(url, timeout, as_json):
    """Is the lakehouse working? One line per component; exit 0 ok, 1 degraded, 2 down.

    \b
    Components and what makes them down / degraded:
      storage        down: the instance storage (or the deployment) does not answer
      daemon         down (--url): no heartbeat, or none newer than 2 min
                     degraded: some daemons silent or erroring; locally no heartbeat
                     (no `lakehouse dev` running)
      repair_sensor  degraded: stopped, last tick failed, or no tick for 3 intervals (min 5 min)
      exchange       down: unreachable; degraded: < 20% request-weight headroom
      disk           down: LAKEHOUSE_ROOT unreadable or < 100 MiB free; degraded: < 1 GiB or < 5% free
      runs           degraded: > 20% of the runs finished in the last 24 h failed
      stuck_runs     degraded: a run not finished whose process is gone, or a pool
                     slot held by a finished run
      notifications  degraded: the last webhook delivery failed
    Overall: down if storage, daemon or disk is down, else degraded if anything is not ok.
    With --url the exchange, disk and notifications are checked from this machine's settings.

    \b
    Example:
        lakehouse health
        lakehouse health --url http://127.0.0.1:3000 --json
    """
    s = settings()
    now = time.time()
    if url:
        components, target = remote_health(s, url, timeout, now)
        mode = "remote"
    else:
        components, target = local_health(s, now)
        mode = "local"
    doc = h.report(components, mode, target, now)
    click.echo(json.dumps(doc, indent=2) if as_json else h.format_text(doc))
    sys.exit(doc["exit_code"])
