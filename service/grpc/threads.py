"""gRPC's thread pool (`Threads`): a fixed pool that gives calls kept waiting by held threads
threads of their own, a thread of the probes' own, and lets a refusal be sent without a turn.
The server is built in service/grpc/server.py; what decides a call's `turn`, and which threads
are held, is the guard (service/grpc/guard.py)."""

from __future__ import annotations

import collections
import threading
import time
from concurrent import futures

from service.core import metrics

# Threads: a call that has waited PATIENCE seconds for a thread gets one of its own, when some
# are held by calls that have waited HELD seconds for their message (longer than a loaded
# machine takes to hand over one that came); such a thread ends after LINGER seconds idle.
PATIENCE, HELD, LINGER = 0.02, 0.25, 1.0


def run(future: futures.Future, fn, args, kwargs) -> None:
    if future.set_running_or_notify_cancel():
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:
            future.set_exception(error)


class Threads(futures.Executor):
    """gRPC's thread pool: `core` threads (SERVING_GRPC_THREADS) take the calls in turn, as a
    fixed pool does, so that under load a thread that ends a call takes the next one at once.
    When calls have waited PATIENCE for a thread while fewer than `core` threads work, the others
    being held by calls that have waited HELD for a message (`held`), each such call gets a
    thread of its own, up to `most` threads in all; such a thread ends after LINGER without a
    call. (A plain pool of `most` threads hands every call to a sleeping thread instead: measured
    about 10 % fewer single-row calls per second; and calls that merely queue under load get no
    more threads, which would only share the same cores.)

    A call's behaviour may carry a `turn` (the guard sets it): "probe" (health, liveness,
    readiness) is taken by a thread of the probes' own, so that a probe never waits behind
    inference, however long the runs; "now" (a refusal) runs at once in the thread that submits
    it, grpcio's poller, as it only sends its status."""

    def __init__(self, core: int, most: int, held):
        self.core, self.most, self.held = core, most, held
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)  # idle threads wait here for a call
        self.queued = threading.Condition(self.lock)  # the spawner waits here for calls to watch
        self.probed = threading.Condition(self.lock)  # the probes' thread waits here
        self.calls: collections.deque[tuple] = collections.deque()  # (since, future, fn, args, kwargs)
        self.probes: collections.deque[tuple] = collections.deque()  # (future, fn, args, kwargs)
        self.threads = self.idle = 0
        self.watching = False  # whether the spawner waits on `queued`
        self.observe = metrics.QUEUE_SECONDS.labels("grpc").observe  # the wait for a thread
        threading.Thread(target=self.spawn, name="grpc-spawner", daemon=True).start()
        threading.Thread(target=self.probe, name="grpc-probes", daemon=True).start()

    def submit(self, fn, *args, **kwargs):
        future = futures.Future()
        turn = next((arg.turn for arg in args if hasattr(arg, "turn")), None)
        if turn == "now":  # a refusal: it only sends its status, here, and takes no thread's turn
            run(future, fn, args, kwargs)
            return future
        with self.lock:
            if turn == "probe":
                self.probes.append((future, fn, args, kwargs))
                self.probed.notify()
                return future
            self.calls.append((time.monotonic(), future, fn, args, kwargs))
            if len(self.calls) <= self.idle:  # an idle thread for each call waiting
                self.ready.notify()
                return future
            if self.threads >= self.core:
                if self.watching:
                    self.queued.notify()
                return future
            self.threads += 1
        self.start(core=True)
        return future

    def waited(self) -> float:
        """Seconds the longest waiting call (the probes aside) has waited for a thread; read without
        the lock, in grpcio's poller: a call taken meanwhile makes it 0."""
        try:
            return time.monotonic() - self.calls[0][0]
        except IndexError:
            return 0.0

    def start(self, core: bool) -> None:
        threading.Thread(target=self.work, args=(core,), name="grpc", daemon=True).start()

    def work(self, core: bool) -> None:
        while True:
            with self.lock:
                while not self.calls:
                    self.idle += 1
                    woken = self.ready.wait(None if core else LINGER)
                    self.idle -= 1
                    if not woken and not self.calls:
                        self.threads -= 1
                        return
                since, future, fn, args, kwargs = self.calls.popleft()
            self.observe(time.monotonic() - since)
            run(future, fn, args, kwargs)
            del future, fn, args, kwargs  # nothing of the call held while idle

    def probe(self) -> None:
        """The probes' thread: they are quick (the process's own state), one after another."""
        while True:
            with self.lock:
                while not self.probes:
                    self.probed.wait()
                future, fn, args, kwargs = self.probes.popleft()
            run(future, fn, args, kwargs)
            del future, fn, args, kwargs

    def spawn(self) -> None:
        """A thread for each call that has waited PATIENCE, beyond the idle ones, while threads
        are held."""
        while True:
            with self.lock:
                while not self.calls:
                    self.watching = True
                    self.queued.wait()
                    self.watching = False
            held = self.held(HELD)
            with self.lock:
                now, late = time.monotonic(), 0
                for call in self.calls:  # in the order they came
                    if now - call[0] < PATIENCE:
                        break
                    late += 1
                working = self.threads - self.idle - held
                new = max(0, min(late - self.idle, self.most - self.threads)) if working < self.core else 0
                self.threads += new
                pause = PATIENCE if late or not self.calls else self.calls[0][0] + PATIENCE - now
            for _ in range(new):
                self.start(core=False)
            time.sleep(pause)
