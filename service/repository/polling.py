"""The model repository as each serving process keeps it: loaded at start, then polled.

Every process that serves (each gunicorn worker, each gRPC process) has its own registry and
its own poller: a daemon thread that calls ModelRegistry.refresh every SERVING_POLL_INTERVAL
seconds, off the request path, and records what changed in the metrics. Processes poll on their
own clocks, so all of them serve a change within one interval of each other. The thread holds
the registry weakly: it ends when the app or server that owns the registry is gone.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable

from service.core import metrics
from service.repository import optimised_cache
from service.repository.registry import ModelRegistry
from service.settings import Settings

log = logging.getLogger(__name__)


def load(settings: Settings) -> ModelRegistry:
    """The registry, read once, its state recorded in the metrics."""
    registry = ModelRegistry(settings.model_repository,
                             (settings.intra_op_threads, settings.inter_op_threads),
                             settings.version_policy,
                             optimised_cache.from_setting(settings.model_cache, settings.model_repository))
    metrics.record_changes(registry.refresh())
    return registry


def start(registry: ModelRegistry, interval: int,
          on_change: Callable[[ModelRegistry], None] | None = None) -> threading.Thread | None:
    """Poll the repository every `interval` seconds (none when 0); `on_change` after a refresh
    that changed something."""
    if interval <= 0:
        return None
    thread = threading.Thread(target=_poll, args=(weakref.ref(registry), interval, on_change),
                              name="repository-poller", daemon=True)
    thread.start()
    return thread


def _poll(owner: weakref.ref, interval: int, on_change) -> None:
    while True:  # until the registry is gone; a daemon thread ends with its process
        time.sleep(interval)
        registry = owner()
        if registry is None:
            return
        try:
            changes = registry.refresh()
            if changes:
                metrics.record_changes(changes)
                if on_change is not None:
                    on_change(registry)
        except Exception:  # a failed poll must not end polling: the next one may succeed
            log.exception("polling the model repository failed")
        del registry
