"""The model repository as each serving process keeps it: loaded at start, then polled.

Every process that serves (each gunicorn worker, each gRPC process) has its own registry and
its own poller: a daemon thread that refreshes it every SERVING_POLL_INTERVAL seconds, off the
request path, through the data plane, whose hooks hear what changed (DataPlane.refresh).
Processes poll on their own clocks, so all of them serve a change within one interval of each
other. The thread holds the data plane weakly: it ends when the app or server that owns it is gone.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.repository import optimised_cache, sessions
from service.repository.registry import ModelRegistry
from service.settings import Settings

if TYPE_CHECKING:
    from service.core.dataplane import DataPlane

log = logging.getLogger(__name__)


def registry(settings: Settings) -> ModelRegistry:
    """The registry of the settings' repository, not read yet (DataPlane.refresh reads it). Each
    serving process calls this once, before any session: its memory budget is registered here."""
    sessions.register(sessions.budget_mb(settings.run_memory_mb, settings.workers))
    return ModelRegistry(settings.model_repository,
                         (settings.intra_op_threads, settings.inter_op_threads),
                         settings.version_policy,
                         optimised_cache.from_setting(settings.model_cache, settings.model_repository))


def start(plane: DataPlane, interval: int,
          on_change: Callable[[DataPlane], None] | None = None) -> threading.Thread | None:
    """Refresh the data plane's repository every `interval` seconds (never when 0); `on_change`
    after a refresh that changed something."""
    if interval <= 0:
        return None
    thread = threading.Thread(target=_poll, args=(weakref.ref(plane), interval, on_change),
                              name="repository-poller", daemon=True)
    thread.start()
    return thread


def _poll(owner: weakref.ref, interval: int, on_change) -> None:
    while True:  # until the data plane is gone; a daemon thread ends with its process
        time.sleep(interval)
        plane = owner()
        if plane is None:
            return
        try:
            if plane.refresh() and on_change is not None:
                on_change(plane)
        except Exception:  # a failed poll must not end polling: the next one may succeed
            log.exception("polling the model repository failed")
        del plane
