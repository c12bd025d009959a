"""The health answers as files, which nginx gives without waiting behind inference.

Under load a probe that reaches gunicorn waits in its backlog with the inference requests (0.41 s
at 1,024 connections, measured; a probe's default timeout is 1 s). So each worker keeps the
answers of /v2/health/live and /v2/health/ready in SERVING_HEALTH_FILES (a folder of the
launcher's runtime, empty at every start) up to date, from a thread of its own, every
REFRESH_SECONDS: `live.json`, and `ready.json` (200) or `not-ready.json` (503), each replaced
whole (a rename). nginx answers from them (service/process/nginx.py) and asks gunicorn while
there are none yet. Every worker loads the same repository, so they write the same answers; a
worker that is replaced or killed leaves the others writing.

Readiness also says when the service sheds load: a worker that refuses a request past the queue
budget (service/rest/queue_budget.py) touches the SHEDDING file, and for SHED_HOLD_SECONDS after
the last refusal the ready answer is 503 with the reason, so that a balancer steers away, while
liveness stays 200 and nothing restarts the pod.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

from service.core.dataplane import DataPlane
from service.rest.codecs.json import dumps

LIVE, READY, NOT_READY, SHEDDING = "live.json", "ready.json", "not-ready.json", "shedding"
REFRESH_SECONDS = 0.5
SHED_HOLD_SECONDS = 2.0  # a shedding service stays unready this long after its last refusal
TOUCH_SECONDS = 0.25  # a worker marks the folder at most this often while it refuses


def shedding(folder: Path | None) -> bool:
    """Whether a worker refused a request past the queue budget within SHED_HOLD_SECONDS."""
    if folder is None:
        return False
    try:
        return time.time() - (folder / SHEDDING).stat().st_mtime < SHED_HOLD_SECONDS
    except OSError:
        return False


def readiness(plane: DataPlane, folder: Path | None) -> tuple[int, dict]:
    """/v2/health/ready's status and document: the repository's readiness, then shedding."""
    state = plane.readiness()
    document: dict = {"ready": state.ready}
    if state.refused:
        document["refused_versions"] = state.refused
    if not state.ready:
        document["error"] = state.error
        return 503, document
    if shedding(folder):
        document.update(ready=False, error="shedding load: requests waited for a worker longer than "
                                           "the queue budget (SERVING_QUEUE_BUDGET_MS)")
        return 503, document
    return 200, document


class HealthFiles:
    def __init__(self, folder: Path, plane: DataPlane):
        self.folder = folder
        self.plane = plane
        self.touched = 0.0

    def start(self) -> None:
        self.write()
        threading.Thread(target=self.keep, name="health-files", daemon=True).start()

    def keep(self) -> None:
        while True:
            time.sleep(REFRESH_SECONDS)
            with contextlib.suppress(OSError):  # a full or vanished folder: the last answers stay
                self.write()

    def shed(self) -> None:
        """A refusal past the queue budget: mark the folder (a cheap touch, not at every refusal)."""
        now = time.monotonic()
        if now - self.touched >= TOUCH_SECONDS:
            self.touched = now
            with contextlib.suppress(OSError):
                (self.folder / SHEDDING).touch()

    def write(self) -> None:
        self.replace(LIVE, dumps({"live": self.plane.live()}))
        status, document = readiness(self.plane, self.folder)
        # The new answer first, then the old one removed: nginx prefers not-ready.json when both exist.
        if status == 200:
            self.replace(READY, dumps(document))
            self.remove(NOT_READY)
        else:
            self.replace(NOT_READY, dumps(document))
            self.remove(READY)

    def replace(self, name: str, body: bytes) -> None:
        path = self.folder / name
        try:
            if path.read_bytes() == body:
                return
        except OSError:
            pass
        staged = self.folder / f".{name}.{os.getpid()}"
        staged.write_bytes(body)
        os.replace(staged, path)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder / name).unlink()
