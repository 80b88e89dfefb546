"""The Celery baseline of bench 4: one no-op task on a local Redis broker and result backend.

The worker (`celery -A bench.celery_app worker`) and the bench share this module; the bench
passes the Redis URL in BENCH_CELERY_REDIS_URL, so no default ever reaches a system Redis.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery  # type: ignore[import-untyped]

REDIS_URL_VARIABLE = "BENCH_CELERY_REDIS_URL"

app: Any = Celery("bench")
app.conf.update(
    broker_url=os.environ.get(REDIS_URL_VARIABLE, ""),
    result_backend=os.environ.get(REDIS_URL_VARIABLE, ""),
    # The same contract as the JetStream side: a worker slot takes one job at a time and
    # acknowledges it only once the job is done.
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
    result_expires=600,
    worker_hijack_root_logger=False,
)


def _noop() -> None:
    return None


# Not a decorator: Celery is untyped, and strict mypy refuses untyped decorators.
noop = app.task(name="bench.noop")(_noop)
