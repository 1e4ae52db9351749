"""The GPU acceptance run: device time from a trace (made-up device events, and a real trace's
annotations), the JUnit report, a failing section recorded without ending the run, arguments
refused by name, and the whole run in its CPU smoke mode (every section runs or says why it
was skipped)."""

import functools
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from momentum_jax.experiments.bench import gpu_acceptance as acceptance

SECTIONS = ("native_kernel_tests", "dispatch_routes", "attention", "train", "decode")


def test_device_seconds_per_call_unions_the_stream_events_inside_each_annotation():
  prefix = acceptance.ANNOTATION_PREFIX
  host = functools.partial(acceptance.TraceEvent, "/host:CPU", "python")
  stream = functools.partial(acceptance.TraceEvent, "/device:GPU:0", "Stream #7(Compute)")
  ops = functools.partial(acceptance.TraceEvent, "/device:GPU:0", "XLA Ops")
  events = [
      host(prefix + "a", 0.0, 100.0), host(prefix + "a", 200.0, 100.0),
      host(prefix + "b", 400.0, 100.0), host(prefix + "c", 600.0, 50.0),
      host("something else", 0.0, 1000.0),
      # call a #1: kernels [10, 30] and [20, 40] overlap, then [50, 60]: busy 40 µs.
      stream("kernel", 10.0, 20.0), stream("kernel", 20.0, 20.0), stream("kernel", 50.0, 10.0),
      # the per-op line repeats the kernels: ignored, as there are streams.
      ops("fusion", 10.0, 50.0),
      # between calls: nobody's.
      stream("kernel", 150.0, 10.0),
      # call a #2 and call b; call c has no device event.
      stream("kernel", 210.0, 40.0), stream("kernel", 410.0, 5.0),
  ]
  seconds = acceptance.device_seconds_per_call(events, prefix)
  assert set(seconds) == {"a", "b"}
  assert seconds["a"] == pytest.approx([40e-6, 40e-6])
  assert seconds["b"] == pytest.approx([5e-6])
  # Without stream lines, every event of the device's process counts.
  no_streams = [e for e in events if not e.thread.startswith("Stream")]
  assert acceptance.device_seconds_per_call(no_streams, prefix) == {"a": pytest.approx([50e-6])}
  host_only = [e for e in events if e.process == "/host:CPU"]
  assert acceptance.device_seconds_per_call(host_only, prefix) == {}


def test_chrome_trace_events_names_processes_and_threads():
  trace = {"traceEvents": [
      {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "pid": 2, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7"}},
      {"ph": "X", "pid": 2, "tid": 7, "name": "fusion", "ts": 10, "dur": 2.5},
      {"ph": "X", "pid": 3, "tid": 1, "name": "unnamed", "ts": 0, "dur": 1},
      {"ph": "i", "pid": 2, "tid": 7, "name": "instant", "ts": 11},
  ]}
  assert acceptance.chrome_trace_events(trace) == [
      acceptance.TraceEvent("/device:GPU:0", "Stream #7", "fusion", 10.0, 2.5),
      acceptance.TraceEvent("3", "1", "unnamed", 0.0, 1.0)]


def test_a_real_trace_holds_the_annotations(tmp_path):
  """A ``jax.profiler`` trace read back: each annotated call is there, on the host, so device
  work inside it is attributed to it."""
  prefix = acceptance.ANNOTATION_PREFIX
  square = jax.jit(lambda x: x @ x)
  x = jnp.ones((32, 32))
  square(x).block_until_ready()
  with jax.profiler.trace(str(tmp_path)):
    for _ in range(3):
      with jax.profiler.TraceAnnotation(prefix + "square"):
        square(x).block_until_ready()
  events = acceptance.read_trace_events(tmp_path)
  calls = [e for e in events if e.name == prefix + "square"]
  assert len(calls) == 3 and all(e.process.startswith("/host:") for e in calls)
  kernels = [acceptance.TraceEvent("/device:GPU:0", "Stream #7", "gemm", e.start_us + 0.25 *
                                   e.duration_us, 0.5 * e.duration_us) for e in calls]
  seconds = acceptance.device_seconds_per_call(events + kernels, prefix)
  assert seconds["square"] == pytest.approx([0.5e-6 * e.duration_us for e in calls])
  assert acceptance.read_trace_events(tmp_path / "elsewhere") is None


def test_junit_outcomes():
  report = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite tests="4">
    <testcase classname="t" name="test_ok"><system-out>----- Captured Out -----
flash out=1.2e-03</system-out></testcase>
    <testcase classname="t" name="test_bad">
      <failure message="AssertionError: {'dq': 0.5}&#10;second line">trace</failure></testcase>
    <testcase classname="t" name="test_broken"><error message="failed on setup">x</error></testcase>
    <testcase classname="t" name="test_gpu"><skipped type="pytest.skip"
      message="needs a GPU: the kernels compile natively only there">s</skipped></testcase>
  </testsuite></testsuites>"""
  assert acceptance.junit_outcomes(report) == [
      {"name": "test_ok", "outcome": "passed", "printed": "flash out=1.2e-03"},
      {"name": "test_bad", "outcome": "failed", "message": "AssertionError: {'dq': 0.5}"},
      {"name": "test_broken", "outcome": "error", "message": "failed on setup"},
      {"name": "test_gpu", "outcome": "skipped",
       "message": "needs a GPU: the kernels compile natively only there"},
  ]


def test_a_failing_section_is_recorded_and_the_run_goes_on(capsys):
  record = acceptance.run_section("broken", lambda: {"ok": 1 / 0})
  assert record["status"] == "failed"
  assert record["reason"] == "ZeroDivisionError: division by zero"
  assert any("1 / 0" in line for line in record["traceback"])
  assert record["seconds"] >= 0
  assert "broken failed: ZeroDivisionError" in capsys.readouterr().out


@pytest.mark.parametrize("argv, named", [
    (["--train-models", "transformer_xl"], "--train-models"),
    (["--train-steps", "0"], "--train-steps"),
    (["--train-steps", "4", "--log-every", "5"], "--log-every=5"),
    (["--seq-lens", "64", "0"], "--seq-lens"),
])
def test_bad_arguments_are_refused_by_name(argv, named, capsys):
  with pytest.raises(SystemExit) as exit_info:
    acceptance.parse_args(argv)
  assert exit_info.value.code == 2
  assert named in capsys.readouterr().err


@pytest.mark.slow
def test_cpu_smoke_runs_every_section(tmp_path):
  """The command as a user types it, in its own process (the CPU even where a GPU is)."""
  output = tmp_path / "acceptance.json"
  done = subprocess.run(
      [sys.executable, "-m", "momentum_jax.experiments.bench.gpu_acceptance", "--cpu-smoke",
       "--output", str(output)], env=dict(os.environ, JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  result = json.loads(output.read_text())
  assert list(result["sections"]) == list(SECTIONS)
  for name, section in result["sections"].items():
    assert section["status"] in ("ok", "skipped"), (name, section)
    assert section["seconds"] > 0 and section["summary"]
    if section["status"] == "skipped":
      assert section["reason"], name
  assert result["hardware"]["platform"] == "cpu"

  native = result["sections"]["native_kernel_tests"]
  assert native["status"] == "skipped" and "needs a GPU" in native["reason"]
  assert native["counts"]["skipped"] > 0 and native["counts"]["passed"] == 0

  attention = result["sections"]["attention"]
  assert attention["status"] == "ok"
  assert set(attention["skipped_candidates"]) == {"cudnn"}
  assert [(row["mode"], row["seq_len"]) for row in attention["rows"]] == [
      ("fwd", 64), ("fwd+bwd", 64)]
  for row in attention["rows"]:
    measured = {"dispatch", "momentum", "plain", "xla", "lightning"}
    assert set(row["seconds"]) == set(row["wall"]) == measured
    assert all(t > 0 for t in row["seconds"].values())
    assert row["vs_xla"]["xla"] == 1.0 and row["vs_cudnn"]["momentum"] is None
    assert row["timing"] == "device" or row["timing_reason"]

  routes = result["sections"]["dispatch_routes"]["routes"]
  assert all(r["taken"] == r["expected"] for r in routes if r["expected"] is not None)
  forced = [r for r in routes if r["options"] == "implementation='pallas'"]
  assert [r["taken"] for r in forced] == ["pallas"]
  assert "flash_attention_forward" in forced[0]["kernels"]
  assert {r["taken"] for r in routes if r not in forced} == {"xla"}
  assert {r["call"] for r in routes} >= {"softmax forward", "momentum_g0.5 decode step"}

  train = result["sections"]["train"]["models"]
  assert set(train) == {"softmax", "momentum_g0.5"}
  for record in train.values():
    assert record["tokens_per_second"] > 0 and record["throughput_records"] == 2
    assert math.isfinite(record["train_loss_last"]) and math.isfinite(record["final_eval_loss"])
    assert record["mfu"] is None and "no peak FLOP/s" in record["mfu_reason"]
  assert train["softmax"]["tokens_per_second_vs_softmax"] == 1.0

  decode = result["sections"]["decode"]["models"]
  assert set(decode) == {"softmax", "momentum_g0.5"}
  assert all(record["tokens_per_second"] > 0 for record in decode.values())

  for name in SECTIONS:
    assert f"== {name}" in done.stdout and f"\n{name:<22}" in done.stdout
