"""Keep TensorFlow's C++ start-up and tf.data chatter off the console; let everything else through.

TensorFlow 2.21 logs from C++ through Abseil. What it logs while its libraries load, before
anyone calls absl::InitializeLog(), goes to stderr whatever TF_CPP_MIN_LOG_LEVEL says. So every
run printed (the first two lines twice, once per library):

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... port.cc:153] oneDNN custom operations are on. ...      (when the library loads)
    E0000 ... node_def_util.cc:682] NodeDef mentions attribute use_unbounded_threadpool ...

The last one, on every fit, comes from op determinism (fit.seed_everything): tf.data's
make_deterministic rewrite finds a TensorDataset (not on its list of deterministic stateful ops)
in the batching pipeline Keras builds for NumPy arrays when the row count is not a multiple of
the batch size, and turns Keras's ParallelMapDatasetV2 into a plain MapDataset. It keeps the
`use_unbounded_threadpool` attribute, which MapDataset does not define, and TensorFlow reports
that at ERROR severity before ignoring it. Nothing is wrong; the training is unchanged.

Importing a model that computes in bool (a masked LSTM) or float16 prints, on CPUs without AVX-512,

    E0000 ... util.cc:131] oneDNN supports DT_BOOL only on platforms with AVX-512. Falling back ...

also at ERROR severity, though TensorFlow then runs its Eigen kernels and the answers are right.

None of these can be switched off at the source without a cost: TF_ENABLE_ONEDNN_OPTS=0 and
dropping op determinism change the numbers, a tf.data pipeline of our own instead of NumPy arrays
changes the shuffling (and so every trained weight), and TF_CPP_MIN_LOG_LEVEL=3 hides every real
C++ error too. So `filtered()` filters file descriptor 2 of the process:
C++ and Python writes alike pass through a pipe, a thread drops the lines that match NOISE and
forwards every other byte to the real stderr. Set TF_CPP_MIN_LOG_LEVEL=0 to see everything.

What tf2onnx, TensorFlow and absl log through Python's logging while a model is loaded, traced
or converted is held back by `python_logs()` instead, which hands the records to the caller.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator

# What follows the severity letter of an Abseil log line: MMDD, time, thread id, file:line].
_ABSL = rb"\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\] "
NOISE = tuple(re.compile(pattern) for pattern in (
    rb"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    # Informational lines from C++ (oneDNN, CPU features, ...): TF_CPP_MIN_LOG_LEVEL >= 1 hides INFO.
    rb"^I" + _ABSL,
    rb"^E" + _ABSL + rb"NodeDef mentions attribute use_unbounded_threadpool which is not in the op "
    rb"definition: Op<name=MapDataset;",
    # oneDNN has no kernels for a type (bool for a masked LSTM, half for float16) without AVX-512:
    # TensorFlow says so at ERROR severity and runs its Eigen kernels instead, with the same results.
    rb"^E" + _ABSL + rb"oneDNN supports DT_[A-Z0-9]+ only on platforms with AVX-512\. Falling back to "
    rb"the default Eigen-based implementation",
))
# The second line of cpu_feature_guard's message, dropped only right after a dropped line.
CONTINUATION = re.compile(rb"^To enable the following instructions: .* rebuild TensorFlow with ")
_PIPE_SIZE = 1 << 20  # room for bursts while the reader thread waits for the GIL


def is_noise(line: bytes, after_noise: bool = False) -> bool:
    """Whether a line of stderr (without its newline) is known noise."""
    line = line.rstrip(b"\r")
    if after_noise and CONTINUATION.match(line):
        return True
    return any(pattern.match(line) for pattern in NOISE)


def _flush_c_stdio() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


class _Filter(threading.Thread):
    def __init__(self, source: int, target: int):
        super().__init__(name="stderr-filter", daemon=True)
        self.source, self.target = source, target

    def forward(self, data: bytes) -> None:
        while data:
            try:
                data = data[os.write(self.target, data):]
            except InterruptedError:
                continue
            except OSError:
                return  # the real stderr is gone: nothing left to tell

    def run(self) -> None:
        pending, after_noise = b"", False
        try:
            while True:
                try:
                    chunk = os.read(self.source, 65536)
                except InterruptedError:
                    continue
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                kept = []
                for line in lines:
                    after_noise = is_noise(line, after_noise)
                    if not after_noise:
                        kept.append(line + b"\n")
                self.forward(b"".join(kept))
            if pending and not is_noise(pending, after_noise):
                self.forward(pending)
        finally:
            os.close(self.source)


@contextlib.contextmanager
def filtered(enabled: bool | None = None):
    """Within the block, the process's stderr (fd 2, so C++ too) loses the lines that match NOISE.

    Restored on exit, exception or not, after everything written has been forwarded. Off when
    `enabled` is False, or by default when TF_CPP_MIN_LOG_LEVEL is 0. Usable as a decorator.
    """
    if enabled is None:
        enabled = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2").strip() != "0"
    if not enabled:
        yield
        return
    sys.stderr.flush()
    _flush_c_stdio()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to filter
        yield
        return
    read_end, write_end = os.pipe()
    with contextlib.suppress(Exception):
        import fcntl

        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    reader = _Filter(read_end, saved)
    reader.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        _flush_c_stdio()
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees the end of it
        reader.join(timeout=10)
        if not reader.is_alive():  # else a child process still holds the pipe; leave it the fd
            os.close(saved)


@contextlib.contextmanager
def python_logs() -> Iterator[list[logging.LogRecord]]:
    """Hold back what tf2onnx, TensorFlow and absl log through Python's logging (INFO chatter,
    and the errors tf2onnx logs before it gives up); yields the records, for error messages."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(logging.WARNING)
    saved = []
    for name in ("tf2onnx", "tensorflow", "absl"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate, logger.level))
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.WARNING)
    try:
        yield records
    finally:
        for logger, handlers, propagate, level in saved:
            logger.handlers[:] = handlers
            logger.propagate = propagate
            logger.setLevel(level)
