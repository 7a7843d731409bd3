"""Steps on Celery workers: the executor that daemon-launched runs use, and the app the workers run.

LAKEHOUSE_CELERY_BROKER_URL (RabbitMQ `amqp://...` or Redis `redis://...`) selects it. The run's own process
claims the `exchange` pool slot (in the instance's database) before it queues a step, so the pool still bounds
exchange requests across every worker on every machine. A worker lost mid-step does not lose the step: tasks
are acknowledged only after they finish and re-queued when their worker dies (writes are idempotent).

Workers: `celery -A resources.celery_steps worker --prefetch-multiplier=1 -Q dagster` (what `lakehouse serve`
starts); the broker URL comes from the environment, never from a file.
"""

from __future__ import annotations

import os

from lakehouse.config import Settings

QUEUE = "dagster"  # dagster-celery's queue; separate deployments on one broker use separate vhosts/databases


def app_config(broker_url: str) -> dict:
    """Celery settings shared by the run process (which queues steps) and the workers (which execute them)."""
    redis = broker_url.startswith(("redis://", "rediss://"))
    return {
        "broker": broker_url,
        # rpc:// sends results back over RabbitMQ to the run that asked; Redis stores them.
        "backend": broker_url if redis else "rpc://",
        "config_source": {
            "task_acks_late": True,  # a worker killed mid-step leaves its message to another worker
            "task_reject_on_worker_lost": True,
            "worker_prefetch_multiplier": 1,
            "broker_connection_retry_on_startup": True,
            "worker_hijack_root_logger": False,
        },
    }


def build_executor(settings: Settings):
    """dagster-celery's executor when a broker is configured, else None (Dagster's default executor)."""
    if not settings.celery_broker_url:
        return None
    from dagster_celery import celery_executor

    config = app_config(settings.celery_broker_url)
    # The broker URL stays an environment reference in the run config: no password in the run's stored config.
    config["broker"] = {"env": "LAKEHOUSE_CELERY_BROKER_URL"}
    if config["backend"] != "rpc://":
        config["backend"] = {"env": "LAKEHOUSE_CELERY_BROKER_URL"}
    return celery_executor.configured(config, name="lakehouse_celery")


def _guarded_task_base():
    """A Celery task base that drops a step whose run has already finished.

    A step message re-queued after its worker died can outlive its run: `lakehouse serve` marks a run it
    interrupted as failed and `run_retries` reruns it, so executing the old message would write events into a
    finished run (and make the retry think nothing is left to do). Such a step is skipped and logged.
    """
    from celery import Task

    class GuardedStepTask(Task):
        def __call__(self, execute_step_args_packed, executable_dict):
            from dagster import DagsterInstance
            from dagster._grpc.types import ExecuteStepArgs
            from dagster_shared.serdes import unpack_value

            args = unpack_value(execute_step_args_packed, as_type=ExecuteStepArgs)
            with DagsterInstance.from_ref(args.instance_ref) as instance:
                run = instance.get_run_by_id(args.run_id)
                if run is None or run.is_finished:
                    status = run.status.value if run else "deleted"
                    print(f"skipping steps {args.step_keys_to_execute} of run {args.run_id}: the run is {status}",
                          flush=True)
                    return []
            return super().__call__(execute_step_args_packed, executable_dict)

    return GuardedStepTask


def _worker_app():
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_execute_job_task, create_resume_job_task, create_task

    broker = Settings.from_env().celery_broker_url or os.environ.get("LAKEHOUSE_CELERY_BROKER_URL", "")
    if not broker:
        raise SystemExit("LAKEHOUSE_CELERY_BROKER_URL is not set; e.g. amqp://guest:guest@127.0.0.1:5672//")
    cfg = app_config(broker)
    app_ = make_app({"broker": cfg["broker"], "backend": cfg["backend"], "include": None,
                     "config_source": cfg["config_source"]})
    app_.conf.update(cfg["config_source"])
    return app_, create_task(app_, base=_guarded_task_base()), create_execute_job_task(app_), create_resume_job_task(app_)


def __getattr__(name: str):
    # `celery -A resources.celery_steps` looks up `app`; built lazily so importing this module needs no broker.
    if name in ("app", "celery"):
        global _APP
        try:
            return _APP[0]
        except NameError:
            _APP = _worker_app()
            return _APP[0]
    raise AttributeError(name)
