"""onnxruntime's options for every session and every run of the service, in one place, and the
memory budget of the runs (docs/memory.md, A budget for every run).

The budget (SERVING_RUN_MEMORY_MB) is a cap on onnxruntime's CPU arena, per process: `register`
makes the process's environment allocator, an arena with `max_mem` set, before any session is
made, and every session uses it (`session.use_env_allocators`). A run that asks for more than is
left fails inside onnxruntime at the allocation, in under a millisecond, instead of taking the
machine's memory (measured: 5.2 GB asked for, refused in 0.2 ms; without the cap the run took
15.8 s). Every run then shrinks the arena (`memory.enable_memory_arena_shrinkage`): what a run
took goes back to the system when it ends (measured: RSS back to 78 MB after a 52 MB run,
129 MB kept without it, with or without the cap).

onnxruntime has no cap of its own per session on the CPU: the CPU provider takes no arena
options (it ignores any it is given), and one environment allocator serves the whole process.
So the budget is the process's: the runs it holds at once (a gRPC process runs up to
SERVING_GRPC_THREADS) share it, as do the prepacked MatMul/Gemm weights of the sessions it
loaded (measured: 64 MB for four 2048x2048 MatMuls), which onnxruntime reserves without checking
the cap: past it, the cap is enforced no more, so load_version refuses a version whose prepacked
weights do not fit (`prepacked_over_budget`). Initializers, read from bytes or memory-mapped from
the model cache, stay out of it. Budget 0: nothing is registered, and runs neither use nor
shrink an arena of the process's.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime
from onnxruntime import GraphOptimizationLevel

log = logging.getLogger(__name__)

SETTING = "SERVING_RUN_MEMORY_MB"
AUTO = "auto"
# The arena's extension is exactly what was asked for (kSameAsRequested), not the next power of
# two: near the cap, a doubling would refuse a run that fits.
SAME_AS_REQUESTED = 1
SHRINK = ("memory.enable_memory_arena_shrinkage", "cpu:0")
# onnxruntime's words when the capped arena cannot give a run what it asks for (bfc_arena.cc):
# the first when the arena knows what is left, the second when nothing is.
REFUSED = re.compile(r"Available memory of (\d+) is smaller than requested bytes of (\d+)"
                     r"|Failed to allocate memory for requested buffer of size (\d+)")
CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
                 Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))  # v1
MEMINFO = Path("/proc/meminfo")
# A model of one Expand of uint8 ones to the shape it is given (`shape` INT64 [1] -> `big`), the
# bytes that tests/test_run_memory.py builds with onnx.helper (onnx is no serving dependency):
# asked for more bytes than any budget or address space, the arena says what it has left.
PROBE_MODEL = bytes.fromhex(
    "08073a5c0a190a036f6e650a05736861706512036269672206457870616e64120b6172656e615f70726f62652a0c"
    "0801100242036f6e654a01015a130a057368617065120a0a08080712040a020801620f0a0362696712080a060802"
    "12020a0042040a00100d")
PROBE_BYTES = 1 << 62

_budget = 0  # bytes, this process's (a fork's child inherits the arena, and so the budget); 0: none
_threads = threading.local()  # each thread's RunOptions (run_options)
_probe: onnxruntime.InferenceSession | None = None


def machine_memory(limits: tuple[Path, ...] = CGROUP_LIMITS, meminfo: Path = MEMINFO) -> int:
    """Bytes the service may use: the cgroup's memory limit when one is set and lower, else
    MemTotal."""
    total = 0
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
    for path in limits:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def default_budget_mb(workers: int, memory: int | None = None) -> int:
    """Half the machine's memory shared among the serving processes (gunicorn's workers and as
    many gRPC processes): every process at its cap at once still leaves the other half to the
    processes themselves, the weights, nginx and the page cache."""
    memory = machine_memory() if memory is None else memory
    return max(1, memory // 2 // (2 * workers) >> 20)


def budget_mb(setting: str, workers: int) -> int:
    """SERVING_RUN_MEMORY_MB as a number of MB: `auto` derived from the machine, 0 off."""
    return default_budget_mb(workers) if setting == AUTO else int(setting)


def register(megabytes: int) -> None:
    """The process's capped arena, once, before any session is made: every session made after
    uses it. 0 registers nothing. Called where each serving process builds its registry
    (service/repository/polling.py), after gunicorn's fork."""
    global _budget
    if _budget:  # onnxruntime takes one arena per device and process
        if megabytes << 20 != _budget:
            log.warning("%s=%d ignored: this process's budget is already %d MB", SETTING, megabytes,
                        _budget >> 20)
        return
    if megabytes <= 0:
        return
    cpu = onnxruntime.OrtMemoryInfo("Cpu", onnxruntime.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                    onnxruntime.OrtMemType.DEFAULT)
    arena = onnxruntime.OrtArenaCfg({"max_mem": megabytes << 20,
                                     "arena_extend_strategy": SAME_AS_REQUESTED})
    onnxruntime.create_and_register_allocator(cpu, arena)
    _budget = megabytes << 20
    log.info("a run may take up to %d MB of onnxruntime's memory in this process (%s)",
             megabytes, SETTING)


def budget() -> int:
    """This process's budget in bytes; 0 when there is none."""
    return _budget


def session_options(threads: tuple[int, int],
                    level: GraphOptimizationLevel | None = None) -> onnxruntime.SessionOptions:
    """Options for a session: `threads` (intra-op, inter-op), the optimisation level (onnxruntime's
    default, ORT_ENABLE_ALL, when None), the process's capped arena when it has a budget."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads
    options.log_severity_level = 3
    if level is not None:
        options.graph_optimization_level = level
    if _budget:
        options.add_session_config_entry("session.use_env_allocators", "1")
        # A memory pattern (one block per input shape, planned from an earlier run) kept a later
        # run's 102 MB from being given back after a refused run (measured, onnxruntime 1.32).
        options.enable_mem_pattern = False
    return options


def run_options() -> onnxruntime.RunOptions:
    """This thread's RunOptions, made once: onnxruntime's own line for a failed run silenced (the
    data plane logs each once), and the arena shrunk at each run's end when the process has a
    budget. One per thread rather than per run, as a fresh one cost 2 us a run (a third of a
    demand run); not one per process, as the limits' watchdog stops a run by setting its
    `terminate` flag (service/core/limits.py), which must stop that run only."""
    options = getattr(_threads, "run_options", None)
    if options is None:
        options = _threads.run_options = onnxruntime.RunOptions()
        options.log_severity_level = 4
        if _budget:
            options.add_run_config_entry(*SHRINK)
    return options


def budget_left() -> int | None:
    """Bytes of the budget that nothing holds now (prepacked weights and runs in flight hold the
    rest), as the arena itself says when the probe model asks it for more than any budget; None
    when it does not say: then onnxruntime enforces the cap no more."""
    global _probe
    if _probe is None:
        _probe = onnxruntime.InferenceSession(PROBE_MODEL, session_options((1, 1)),
                                              providers=["CPUExecutionProvider"])
    try:
        _probe.run(None, {"shape": np.array([PROBE_BYTES], np.int64)}, run_options())
    except Exception as error:
        found = REFUSED.search(str(error))
        return int(found[1]) if found is not None and found[1] else None
    return None


def prepacked_over_budget() -> bool:
    """Whether the sessions' prepacked weights now exceed the budget. onnxruntime reserves them in
    the arena without checking its cap, and once they pass it the cap is enforced no more
    (measured, 1.32: 64 MB prepacked under a 60 MB budget, and a 976 MB run then ran). Runs in
    flight can take what is left for a moment: asked three times, 0.1 s apart."""
    for attempt in range(3):
        if budget_left() is not None:
            return False
        time.sleep(0.1 * (attempt < 2))
    return True


def over_budget(error: Exception, model: str) -> str | None:
    """The client's message when `error` is onnxruntime refusing a run of `model` more memory
    than its process's budget has left; None for any other error, and always without a budget."""
    limit = budget()
    found = REFUSED.search(str(error)) if limit else None
    if found is None:
        return None
    asked = int(found[2] or found[3])
    left = f"{int(found[1]):,} were left" if found[1] else "which the process could not get"
    message = (f"model {model!r} needs more memory for this request than its budget allows: it "
               f"asked for {asked:,} bytes at once, {left}; the budget is {limit:,} bytes per "
               f"process ({SETTING}={limit >> 20}): send fewer rows, or raise {SETTING}")
    log.warning("%s", message)
    return message
