"""The training command prints progress and results, not TensorFlow's C++ chatter; the stderr filter
(training/quiet.py) drops only known noise, forwards everything else and restores stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from training import quiet

ROOT = Path(__file__).resolve().parent.parent

# Lines TensorFlow 2.21 printed during `make train`, as they came.
STARTUP = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1795692658.029948    6456 port.cc:153] oneDNN custom operations are on. You may see"
    b" slightly different numerical results due to floating-point round-off errors from different"
    b" computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n"
    b"I0000 00:00:1795692711.063077    6837 cpu_feature_guard.cc:227] This TensorFlow binary is"
    b" optimized to use available CPU instructions in performance-critical operations.\n"
    b"To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other"
    b" operations, rebuild TensorFlow with the appropriate compiler flags.\n"
)
THREADPOOL = (
    b"E0000 00:00:1795692662.344030    6456 node_def_util.cc:682] NodeDef mentions attribute"
    b" use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset;"
    b" signature=input_dataset:variant, other_arguments: -> handle:variant; attr=f:func> This may be"
    b" expected if your graph generating binary is newer  than this binary. Unknown attributes will"
    b" be ignored. NodeDef: {{node ParallelMapDatasetV2/_15}}\n"
)
ONEDNN_FALLBACK = (
    b"E0000 00:00:1795694471.041871   18071 util.cc:131] oneDNN supports DT_BOOL only on platforms"
    b" with AVX-512. Falling back to the default Eigen-based implementation if present.\n"
    b"E0000 00:00:1795694507.585499   18738 util.cc:131] oneDNN supports DT_HALF only on platforms"
    b" with AVX-512. Falling back to the default Eigen-based implementation if present.\n"
)
NOISE_WORDS = ("E0000", "I0000", "use_unbounded_threadpool", "absl::InitializeLog", "oneDNN")


def python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          timeout=120, env={**os.environ, **env})


def test_known_noise_is_recognised_and_real_messages_are_not():
    lines = (STARTUP + THREADPOOL + ONEDNN_FALLBACK).splitlines()
    after = False
    for line in lines:
        after = quiet.is_noise(line, after)
        assert after, line
    for line in (
        b"W0000 00:00:1795692662.344030    6456 some_op.cc:12] a real warning from C++",
        b"E0000 00:00:1795692662.344030    6456 node_def_util.cc:682] NodeDef mentions attribute other",
        b"E0000 00:00:1795692662.344030    6456 op_kernel.cc:1830] OP_REQUIRES failed: out of memory",
        b"E0000 00:00:1795694471.041871   18071 util.cc:131] oneDNN failed to create a primitive",
        b"/x/training/fit.py:3: UserWarning: the learning rate is high",
        b"To enable the following instructions: only noise right after a dropped line",
        b"error: spec x.json: field 'dataset' must be one of demand, digits, digits-binary",
    ):
        assert not quiet.is_noise(line), line
    assert quiet.is_noise(lines[3], after_noise=True)


FILTER_SCRIPT = """
    import os, sys, warnings
    from training import quiet

    before = os.fstat(2)
    try:
        with quiet.filtered():
            os.write(2, {noise!r})
            print("a line from Python's sys.stderr", file=sys.stderr)
            os.write(2, b"W0000 00:00:1.5   7 x.cc:1] a C++ warning, kept\\n" + {threadpool!r})
            warnings.warn("a genuine warning")
            os.write(2, b"no newline at the end")
            raise ValueError("raised inside")
    except ValueError as error:
        print(f"caught: {{error}}", file=sys.stderr)
    after = os.fstat(2)
    print("restored" if (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino) else "NOT restored")
    with quiet.filtered():
        print("second use", file=sys.stderr)
"""


def test_filter_drops_noise_forwards_the_rest_in_order_and_restores_stderr():
    script = FILTER_SCRIPT.format(noise=STARTUP, threadpool=THREADPOOL)
    result = python(script)
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert result.stdout.decode() == "restored\n"
    for word in NOISE_WORDS:
        assert word not in err, err
    kept = err.splitlines()
    assert kept[0] == "a line from Python's sys.stderr"
    assert kept[1] == "W0000 00:00:1.5   7 x.cc:1] a C++ warning, kept"
    assert "UserWarning: a genuine warning" in kept[2]
    # The unterminated line is flushed before stderr is restored, so it precedes what follows.
    assert err.endswith("no newline at the endcaught: raised inside\nsecond use\n"), err


def test_filter_is_off_with_tf_cpp_min_log_level_0_and_an_exception_still_restores():
    script = FILTER_SCRIPT.format(noise=STARTUP, threadpool=THREADPOOL)
    result = python(script, TF_CPP_MIN_LOG_LEVEL="0")
    assert result.returncode == 0
    assert result.stdout.decode() == "restored\n"
    assert result.stderr.startswith(STARTUP)
    assert THREADPOOL in result.stderr


@pytest.mark.parametrize("level", ["2", "0"])
def test_tensorflow_start_up_lines_are_there_and_filtered(level):
    result = python("""
        from training import quiet
        with quiet.filtered():
            import tensorflow
        print("imported")
    """, TF_CPP_MIN_LOG_LEVEL=level)
    assert result.stdout.decode() == "imported\n"
    if level == "0":  # the noise is real, so the filtered run below proves something
        assert b"absl::InitializeLog" in result.stderr
    else:
        assert result.stderr.decode() == ""


def test_training_prints_progress_and_results_only(tmp_path):
    spec = json.loads((ROOT / "training/specs/digits-binary.json").read_text())
    spec["training"]["epochs"] = 2
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # training/__init__.py sets it
    result = subprocess.run(
        [sys.executable, "-m", "training", str(tmp_path / "spec.json"), "--repository", str(tmp_path / "m")],
        cwd=ROOT, capture_output=True, text=True, timeout=180, env=env,
    )
    assert result.returncode == 0, result.stderr
    for word in NOISE_WORDS:
        assert word not in result.stdout + result.stderr
    assert result.stderr == ""
    assert "Epoch 2/2" in result.stdout
    assert "digits-binary" in result.stdout.splitlines()[-2]  # the summary table
