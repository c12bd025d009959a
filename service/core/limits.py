"""Bounds on every run of a model (docs/reliability.md, Limits): how long it may take, and how
many of its long runs the whole service holds at once.

Time. A run's deadline is the soonest of its model's limit (the card's `limits.timeout_ms`, else
SERVING_RUN_TIMEOUT_MS, never above SERVING_MAX_RUN_TIMEOUT_MS) and the client's (a gRPC
deadline, or the request's `timeout` parameter in microseconds, as tritonclient sends it over
REST and gRPC alike). A request whose deadline has passed before it runs is not run; a run past
it is stopped with onnxruntime's RunOptions.terminate, which onnxruntime reads between nodes and
in every iteration of a Loop (measured: a Loop of hours stopped within a millisecond of the
flag). A single node that takes long runs to its end first.

Share, a bulkhead. A run that has lasted LONG_RUN seconds takes one of its model's slots, shared
by every serving process: a byte of a file per model, locked with an open file description lock,
which the kernel drops when the process dies. While every slot is held, the model's new requests
are refused at once (503, Retry-After), and a long run that finds none free is stopped the same
way: so a slow or runaway model holds at most its slots of the workers and threads
(SERVING_MODEL_LONG_RUNS; `auto` is every worker but one), and the other models keep the rest.
Fast runs never take a slot: a model that answers quickly may use every worker.

One watchdog thread per process looks at the runs in flight every TICK seconds; no run wakes it
(that would cost a switch of threads per run).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.core import metrics
from service.core.errors import BadRequest, DeadlineExceeded, ModelBusy, ServiceError
from service.core.types import Call, InferenceRequest
from service.settings import Settings

if TYPE_CHECKING:
    from service.repository.version_folder import LoadedModel

LONG_RUN = 0.1  # seconds: longer than any single-row run of a model fit to serve online
TICK = 0.02  # seconds between two looks of the watchdog: how late a limit may act
# struct flock (Linux): l_type, l_whence, l_start, l_len, l_pid, and the padding after it.
FLOCK = "hhqqi4x"
# The limits a deadline may be, in words.
CARD, DEFAULT = "its card's limit of {} ms", "its limit of {} ms (SERVING_RUN_TIMEOUT_MS)"
REQUEST, CLIENT = "the request's timeout of {} us", "the client's deadline"
MARKS = 1 << 16  # bytes of a model's file: one per slot, as many as a card may ask for


class Slots:
    """A model's slots in the whole service: bytes of one file that every serving process locks
    (open file description locks: the kernel drops them with the process); within a process,
    `held` tells its threads apart, as such locks belong to the process's open file.

    Each held slot is also marked in the file, mapped in memory, so that asking whether one is
    free costs a read, not a system call (measured: 3.9 us by locking, a tenth of a demand
    request); a mark left by a process that died is found stale by the lock and cleared."""

    def __init__(self, count: int, path: Path | None):
        self.count = count
        self.held: set[int] = set()
        self.lock = threading.Lock()
        self.fd = self.marks = None
        if path is not None:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if os.fstat(self.fd).st_size < MARKS:
                os.ftruncate(self.fd, MARKS)
            self.marks = mmap.mmap(self.fd, MARKS)

    def take(self) -> int | None:
        """A free slot, now held; None when every one is held."""
        with self.lock:
            for slot in range(self.count):
                if slot not in self.held and self._lock(slot, fcntl.F_WRLCK):
                    self.held.add(slot)
                    if self.marks is not None:
                        self.marks[slot] = 1
                    return slot
        return None

    def give(self, slot: int) -> None:
        with self.lock:
            if self.marks is not None:
                self.marks[slot] = 0
            self._lock(slot, fcntl.F_UNLCK)
            self.held.discard(slot)

    def free(self) -> bool:
        """Whether a slot is free now."""
        if self.marks is None:
            return len(self.held) < self.count
        if self.marks.find(b"\0", 0, self.count) >= 0:
            return True
        slot = self.take()  # every slot marked: a mark may be a dead process's
        if slot is None:
            return False
        self.give(slot)
        return True

    def _lock(self, slot: int, kind: int) -> bool:
        if self.fd is None:
            return True
        try:
            fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, struct.pack(FLOCK, kind, os.SEEK_SET, slot, 1, 0))
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES):  # another process holds it
                return False
            raise
        return True


@dataclass(eq=False, slots=True)
class Run:
    """A run in flight, as the watchdog sees it."""
    model: LoadedModel
    started: float
    deadline: float | None  # time.perf_counter()'s clock
    limit: tuple[str, object]  # which limit the deadline is: words, and the figure for {} in them
    options: object  # the thread's onnxruntime.RunOptions: its terminate flag stops the run
    slots: Slots | None
    slot: int | None = None
    stopped: ServiceError | None = None  # why the watchdog stopped it


class Limits:
    """The limits of one serving process's runs, and the watchdog that enforces them."""

    def __init__(self, settings: Settings):
        self.default_ms = settings.run_timeout_ms
        self.ceiling_ms = settings.max_run_timeout_ms
        bound = settings.model_long_runs
        self.long_runs = (None if bound == "off" else max(1, settings.workers - 1) if bound == "auto"
                          else int(bound))
        self.folder = settings.run_slots
        self.runs: dict[int, Run] = {}
        self.slots: dict[tuple[str, int], Slots] = {}
        self.lock = threading.Lock()
        self.watchdog: threading.Thread | None = None

    def start(self, model: LoadedModel, call: Call, request: InferenceRequest) -> Run | None:
        """The run about to start, watched; None when no limit applies to it. DeadlineExceeded
        when its deadline has passed."""
        now = time.perf_counter()
        deadline, limit = self.deadline(model, call, request, now)
        if deadline is not None and deadline <= now:
            self.count(model, "time")
            raise DeadlineExceeded(f"model {model.name!r} was not run: {words(limit)} had passed")
        slots = self.share(model)
        if deadline is None and slots is None:
            return None
        run = Run(model, now, deadline, limit, model.run_options(), slots)
        self.runs[id(run)] = run
        if self.watchdog is None:
            self.watchdog = threading.Thread(target=self.watch, name="run-watchdog", daemon=True)
            self.watchdog.start()
        return run

    def admit(self, model: LoadedModel) -> None:
        """ModelBusy when the model holds all its slots: checked as the request arrives, so that
        a refusal costs little beside an answer."""
        slots = self.share(model)
        if slots is not None and not slots.free():
            self.count(model, "share")
            raise busy(model, slots.count)

    def end(self, run: Run) -> None:
        with self.lock:
            del self.runs[id(run)]
            if run.slot is not None:
                run.slots.give(run.slot)
        if run.stopped is not None:
            run.options.terminate = False  # the thread's options serve its next run

    def deadline(self, model: LoadedModel, call: Call, request: InferenceRequest,
                 now: float) -> tuple[float | None, tuple[str, object]]:
        """The soonest of the model's limit (from `now`, when the run starts) and the client's
        (from when the request arrived), and which one it is (put in words only when needed)."""
        ms = model.card.limits.get("timeout_ms")
        if ms is not None:
            ms, limit = min(ms, self.ceiling_ms), CARD
        else:
            ms, limit = self.default_ms, DEFAULT
        deadline = now + ms / 1000 if ms else None
        limit = (limit, ms)
        timeout = request.parameters.get("timeout")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
                raise BadRequest("parameters.timeout must be a whole number of microseconds, 0 for none")
            if timeout and (deadline is None or call.started + timeout / 1e6 < deadline):
                deadline, limit = call.started + timeout / 1e6, (REQUEST, timeout)
        if call.deadline is not None and (deadline is None or call.deadline < deadline):
            deadline, limit = call.deadline, (CLIENT, None)
        return deadline, limit

    def share(self, model: LoadedModel) -> Slots | None:
        count = model.card.limits.get("long_runs", self.long_runs)
        if count is None:
            return None
        slots = self.slots.get((model.name, count))
        if slots is None:
            path = None
            if self.folder is not None:  # model names are safe as file names; hashed to be sure
                path = self.folder / hashlib.sha256(model.name.encode()).hexdigest()[:32]
            slots = self.slots.setdefault((model.name, count), Slots(count, path))
        return slots

    def stopped(self, run: Run) -> ServiceError | None:
        """Why the watchdog stopped the run, if it did; counted."""
        if run.stopped is not None:
            self.count(run.model, "share" if isinstance(run.stopped, ModelBusy) else "time")
        return run.stopped

    @staticmethod
    def count(model: LoadedModel, limit: str) -> None:
        metrics.observe_limit(model.name, str(model.version), limit)

    def watch(self) -> None:
        while True:
            time.sleep(TICK)
            self.look(time.perf_counter())

    def look(self, now: float) -> None:
        """Stops the runs past their deadline, and those that became long without a slot. A method
        of its own, so that the watchdog holds no run (and so no model) while it sleeps: a version
        unloaded meanwhile is freed, its mapped weights with it."""
        for run in list(self.runs.values()):
            with self.lock:
                if id(run) not in self.runs or run.stopped is not None:
                    continue
                if run.deadline is not None and now >= run.deadline:
                    run.stopped = DeadlineExceeded(
                        f"model {run.model.name!r} was stopped after {now - run.started:.3f} s: "
                        f"{words(run.limit)} had passed")
                elif run.slots is not None and run.slot is None and now - run.started >= LONG_RUN:
                    run.slot = run.slots.take()
                    if run.slot is None:
                        run.stopped = busy(run.model, run.slots.count)
                if run.stopped is not None:
                    run.options.terminate = True


def words(limit: tuple[str, object]) -> str:
    return limit[0].format(limit[1])


def busy(model: LoadedModel, count: int) -> ModelBusy:
    return ModelBusy(f"model {model.name!r} is at its limit of {count} long "
                     f"run{'s' if count > 1 else ''} at once; try again shortly")
