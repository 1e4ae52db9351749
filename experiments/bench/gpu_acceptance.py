"""The GPU acceptance run in one command: the native kernel tests, the dispatch routes taken, our
attention kernels against cuDNN and XLA, the 125M preset's training throughput and MFU, and
decoding speed, into one JSON and a printed table.

    python -m momentum_jax.experiments.bench.gpu_acceptance [--output PATH] [--trace-dir DIR]
        [--seq-lens 1024 4096 8192] [--train-models softmax momentum_g0.5] [--train-steps 20]
        [--cpu-smoke]

Run it from a checkout with pytest installed (the native kernel tests live in tests/, which is
not installed), e.g. after ``pip install -e '.[gpu]' pytest``. Each section records ``status``
("ok", "skipped" or "failed"), a ``reason`` unless ok, a one-line ``summary`` and its
``seconds``; a section that raises is recorded as failed and the run goes on. The JSON is
rewritten after every section, so a run cut short keeps what it measured. The exit status is 1
when a section failed (a native test failing or a route differing from the dispatch table
included), else 0. Sections, in the order they run:

  native_kernel_tests  ``pytest tests/kernels/test_native_gpu.py`` in a subprocess, before this
                       process opens the GPU (so the two do not share its memory): every kernel
                       compiled by Triton and compared with its reference on outputs and
                       gradients. Counts and each test's printed errors, from the JUnit report.
  dispatch_routes      for the attention calls of the sections below, which implementation
                       each takes, read from its traced program (cuDNN's attention primitive, a
                       Pallas kernel by name, else XLA; traced on shapes alone, nothing runs)
                       beside the choice of ``momentum_jax.attention.dispatch``'s table: softmax,
                       momentum and lightning attention with ``implementation=None`` at every T;
                       at the first T also a window, segment ids, sinks, float32 and a forced
                       ``implementation="pallas"``; and each train model's forward pass (on a
                       micro-batch, in the train config's dtype) and single-token decoding step.
  attention            the candidates of ``experiments/bench/kernels.py``: dispatch (momentum
                       attention as a user calls it), momentum and plain (our flash kernel with
                       and without the shear), cudnn and xla (``jax.nn.dot_product_attention``)
                       and lightning (our Lightning-2 kernel); bfloat16, causal, N = --heads,
                       H = --head-dim, B = max(1, --tokens // T), forward and forward + backward.
                       Each compiled call runs twice, then --repeats times interleaved inside one
                       ``jax.profiler`` trace per (mode, T), each call in its own annotation. A
                       call's device time is the union of the intervals of the device events
                       that start inside its annotation (CUDA stream lines only, when the trace
                       has them); the row reports medians, from the trace when every candidate
                       has device events, else wall-clock (on the CPU, whose trace has none).
                       Ratios ``a/b`` are t_b / t_a: above 1, a is faster.
  train                the ``text_lm --preset gpu_125m`` models named by --train-models (GPT-2
                       small shapes, 123.6M parameters) with the preset's ``TrainConfig``
                       (bfloat16 compute, float32 weights, AdamW, 32 rows × 16 accumulated
                       micro-batches × 1024 tokens per step) for the first --train-steps steps
                       of its learning-rate schedule, through
                       ``momentum_jax.train.train`` on uniform random tokens (no corpus needed;
                       throughput does not depend on the tokens). Tokens/s and MFU are the
                       trainer's own log records (the compiling first step is not timed), the
                       median over records; ratios against softmax.
  decode               ``momentum_jax.nn.generate`` on each trained model: --decode-batch prompts
                       of --prompt-len random tokens, --new-tokens greedy tokens; one untimed
                       call compiles, then the median wall time of --repeats calls, the models
                       interleaved. Tokens/s = batch × new tokens / time (the prefill included).

``--cpu-smoke`` runs every section's code path on the CPU (32-65 s on a busy 2-core CPU): T = 64,
B = 1, N = 2, H = 16, two repeats (the kernels in Pallas interpret mode, cuDNN skipped with its
reason), the preset's models at 2 layers, d_model 32, 32 tokens, 4 steps; the native tests are
collected and skipped (they need a GPU). Its numbers only show that the script works.

Hardware and runtime: one NVIDIA H100 or H200, under 8 minutes with the defaults (an estimate,
not yet run on a GPU). The sections' ``seconds`` show where the time goes; --train-steps,
--train-models and --seq-lens trim it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import json
import math
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple
from xml.etree import ElementTree

import jax
import jax.numpy as jnp
from flax import nnx
from jax.extend.core import Jaxpr, JaxprEqn, jaxprs_in_params

from momentum_jax.attention import momentum_attention, softmax_attention
from momentum_jax.attention.dispatch import softmax_call, softmax_route, wants_kernel
from momentum_jax.attention.lightning import lightning_attention
from momentum_jax.data import Batch
from momentum_jax.experiments.bench.kernels import (
    CANDIDATES, MODES, SOFTMAX, causal_attention_flops, compiled_candidates)
from momentum_jax.experiments.bench.timing import attention_inputs, interleaved_medians
from momentum_jax.experiments.recipe import hardware
from momentum_jax.experiments.text_lm.config import gpu_125m_config
from momentum_jax.kernels.backend import default_interpret
from momentum_jax.nn import Transformer, TransformerConfig, decode, generate, init_cache
from momentum_jax.train import TrainConfig, model_flops_per_token, peak_flops_per_second, train

PROG = "python -m momentum_jax.experiments.bench.gpu_acceptance"
NATIVE_TESTS = "tests/kernels/test_native_gpu.py"
BASELINE_MODEL = "softmax"
# What --cpu-smoke changes: the attention shapes, and the preset's models and batch made tiny.
SMOKE_ATTENTION = dict(seq_lens=[64], tokens=64, heads=2, head_dim=16, repeats=2)
SMOKE_MODEL = dict(vocab_size=256, context_len=32, num_layers=2, d_model=32, num_heads=2,
                   num_kv_heads=2, head_dim=16, mlp_dim=64)
SMOKE_TRAIN = dict(batch_size=2, accumulate_steps=2)
SMOKE_RUN = dict(train_steps=4, log_every=2, decode_batch=2, prompt_len=8, new_tokens=8)
# Annotation names of the timed attention calls in the profiler trace.
ANNOTATION_PREFIX = "gpu_acceptance/"
# The primitives of jax.nn.dot_product_attention's cuDNN implementation start so.
CUDNN_PRIMITIVE = "dot_product_attention"


# Shared by the sections.

def _one_line(error: BaseException) -> str:
  return f"{type(error).__name__}: {(str(error) or '-').splitlines()[0]}"


def _skipped(reason: str) -> dict[str, Any]:
  return {"status": "skipped", "reason": reason, "summary": reason}


def run_section(name: str, section: Callable[[], dict[str, Any]]) -> dict[str, Any]:
  """``section()`` with its ``seconds`` added; an exception is recorded as ``status: "failed"``
  with the error and the end of its traceback, so that one broken section does not end the
  run."""
  print(f"\n== {name}", flush=True)
  start = time.perf_counter()
  try:
    record = section()
  except Exception as error:  # recorded, and the other sections still run
    record = {"status": "failed", "reason": _one_line(error), "summary": _one_line(error),
              "traceback": traceback.format_exc().splitlines()[-12:]}
    print(f"{name} failed: {record['reason']}", flush=True)
  record["seconds"] = time.perf_counter() - start
  return record


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
  return None if numerator is None or denominator is None else numerator / denominator


# Native kernel tests.

def junit_outcomes(report_xml: str) -> list[dict[str, str]]:
  """Each test case of a pytest JUnit report: ``name``, ``outcome`` (passed, failed, error or
  skipped), the first line of its failure or skip ``message`` and what it ``printed``."""
  tags = {"failure": "failed", "error": "error", "skipped": "skipped"}
  cases = []
  for case in ElementTree.fromstring(report_xml).iter("testcase"):
    record = {"name": case.get("name", "?"), "outcome": "passed"}
    for tag, outcome in tags.items():
      element = case.find(tag)
      if element is not None:
        message = (element.get("message") or element.text or "").strip()
        record.update(outcome=outcome, message=message.splitlines()[0] if message else "")
        break
    # pytest heads what a test printed with a "----- Captured Out -----" line.
    printed = "\n".join(line for line in (case.findtext("system-out") or "").splitlines()
                        if not re.fullmatch(r"-+ Captured \w+ -+", line.strip())).strip()
    if printed:
      record["printed"] = printed
    cases.append(record)
  return cases


def native_kernel_tests(timeout_s: float, cpu_only: bool) -> dict[str, Any]:
  """Section (a): ``pytest`` on the native GPU kernel tests in a subprocess, with the outcome
  and printed errors of every test. ``cpu_only`` hides the GPU from it."""
  checkouts = [pathlib.Path(__file__).resolve().parents[2], pathlib.Path.cwd()]
  root = next((path for path in checkouts if (path / NATIVE_TESTS).exists()), None)
  if root is None:
    return _skipped(f"{NATIVE_TESTS} is neither beside this module nor in the current folder: "
                    "run from a checkout")
  # Memory on demand: were this process's GPU memory already taken, the tests still find room.
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  if cpu_only:
    env["JAX_PLATFORMS"] = "cpu"
  with tempfile.TemporaryDirectory() as scratch:
    report = pathlib.Path(scratch) / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-o", "junit_logging=system-out", f"--junitxml={report}", NATIVE_TESTS]
    try:
      done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True,
                            timeout=timeout_s)
    except subprocess.TimeoutExpired:
      return {"status": "failed", "summary": "timed out",
              "reason": f"pytest did not finish in {timeout_s:g} s (--native-timeout)"}
    output_tail = done.stdout.strip().splitlines()[-15:]
    if not report.exists():
      return {"status": "failed", "summary": f"pytest exited with {done.returncode}",
              "reason": f"pytest exited with {done.returncode} and wrote no report",
              "output_tail": output_tail + done.stderr.strip().splitlines()[-15:]}
    tests = junit_outcomes(report.read_text())
  counts = {outcome: sum(t["outcome"] == outcome for t in tests)
            for outcome in ("passed", "failed", "error", "skipped")}
  record = {"command": " ".join(["python", *command[1:3], NATIVE_TESTS]), "counts": counts,
            "returncode": done.returncode, "tests": tests, "output_tail": output_tail,
            "summary": ", ".join(f"{n} {outcome}" for outcome, n in counts.items())}
  print(record["summary"], flush=True)
  for test in tests:
    if test["outcome"] in ("failed", "error"):
      print(f"  {test['outcome']}: {test['name']}: {test.get('message', '')}", flush=True)
  if counts["failed"] or counts["error"]:
    bad = counts["failed"] + counts["error"]
    return {"status": "failed", "reason": f"{bad} of {len(tests)} tests failed", **record}
  if not counts["passed"]:
    reasons = sorted({t.get("message", "") for t in tests if t["outcome"] == "skipped"})
    return {**record, "status": "skipped",
            "reason": "; ".join(reasons) or f"no tests ran (pytest exit {done.returncode})"}
  return {"status": "ok", **record}


# Attention against cuDNN and XLA.

class TraceEvent(NamedTuple):
  """One timed event of a profiler trace: where it ran (the ``process``, ``/device:GPU:0`` or
  ``/host:CPU``, and its ``thread``, e.g. a CUDA stream ``Stream #7(Compute)``), its ``name``
  and its interval in microseconds."""

  process: str
  thread: str
  name: str
  start_us: float
  duration_us: float


def chrome_trace_events(trace: Mapping[str, Any]) -> list[TraceEvent]:
  """The complete (``"ph": "X"``) events of a Chrome-format trace, their process and thread
  names read from its metadata (``"ph": "M"``) events."""
  events = trace.get("traceEvents", [])
  names = {(e["pid"], e.get("tid") if e["name"] == "thread_name" else None):
           str(e.get("args", {}).get("name", ""))
           for e in events if e.get("ph") == "M" and e.get("name") in ("process_name",
                                                                        "thread_name")}
  return [TraceEvent(names.get((e["pid"], None), str(e["pid"])),
                     names.get((e["pid"], e.get("tid")), str(e.get("tid"))), str(e["name"]),
                     float(e["ts"]), float(e["dur"]))
          for e in events if e.get("ph") == "X" and "dur" in e]


def read_trace_events(trace_dir: pathlib.Path) -> list[TraceEvent] | None:
  """The events of the newest Chrome-format trace (``*.trace.json.gz``) a ``jax.profiler``
  session wrote under ``trace_dir``, or None when there is none."""
  files = sorted(trace_dir.glob("plugins/profile/*/*.trace.json.gz"))
  if not files:
    return None
  with gzip.open(files[-1], "rt") as file:
    return chrome_trace_events(json.load(file))


def _union_length(intervals: list[tuple[float, float]]) -> float:
  total, reach = 0.0, -math.inf
  for start, end in sorted(intervals):
    if end > reach:
      total += end - max(start, reach)
      reach = end
  return total


def device_seconds_per_call(events: Sequence[TraceEvent], prefix: str) -> dict[str, list[float]]:
  """For each annotation ``prefix + name`` among a profiler trace's ``events``, one entry per
  annotated call: the seconds the device was busy with work that started inside the call's
  annotation, the union of those device events' intervals (work on overlapping streams, and the
  per-op lines that repeat the kernels, counts once).

  Device events are those of processes named ``/device:...``; when some of their threads are
  CUDA streams (named ``Stream ...``), only those. A call with no device event inside its
  annotation has no entry (a CPU trace has no device events).
  """
  device = [e for e in events if e.process.startswith("/device:")]
  streams = [e for e in device if e.thread.startswith("Stream")]
  intervals = [(e.start_us, e.start_us + e.duration_us) for e in streams or device]
  calls: dict[str, list[float]] = {}
  for event in events:
    if event.process.startswith("/device:") or not event.name.startswith(prefix):
      continue
    end = event.start_us + event.duration_us
    inside = [interval for interval in intervals if event.start_us <= interval[0] <= end]
    if inside:
      calls.setdefault(event.name[len(prefix):], []).append(1e-6 * _union_length(inside))
  return calls


def profiled_medians(calls: Mapping[str, Callable[[], object]], repeats: int,
                     trace_dir: pathlib.Path) -> dict[str, Any]:
  """Median ``wall`` and ``device`` seconds per call of each candidate (two untimed calls, then
  ``repeats`` interleaved calls inside one profiler trace), the ``timing`` used (``"device"``
  when every candidate has device events in the trace, else ``"wall"``, with the
  ``timing_reason``)."""
  def annotated(name: str, call: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
      with jax.profiler.TraceAnnotation(ANNOTATION_PREFIX + name):
        return jax.block_until_ready(call())
    return run

  for _ in range(2):
    for call in calls.values():
      jax.block_until_ready(call())
  with jax.profiler.trace(str(trace_dir)):
    wall = interleaved_medians({name: annotated(name, call) for name, call in calls.items()},
                               repeats, warmup=0)
  trace = read_trace_events(trace_dir)
  per_call = {} if trace is None else device_seconds_per_call(trace, ANNOTATION_PREFIX)
  device = {name: statistics.median(per_call[name]) for name in calls if name in per_call}
  timing = {"wall": wall, "device": device, "timing": "device"}
  if trace is None:
    timing.update(timing="wall", timing_reason=f"the profiler wrote no *.trace.json.gz under "
                                               f"{trace_dir}")
  elif set(device) != set(calls):
    missing = sorted(set(calls) - set(device))
    timing.update(timing="wall", timing_reason=f"no device events in the trace for {missing} "
                                               f"(backend {jax.default_backend()})")
  return timing


def attention_row(mode: str, seq_len: int, batch: int, heads: int, head_dim: int,
                  timing: dict[str, Any]) -> dict[str, Any]:
  """One result row: the timing's medians, TFLOP/s of the softmax candidates, and every
  candidate's speed against cuDNN and XLA (``vs_cudnn[c] = t_cudnn / t_c``, likewise XLA)."""
  seconds = timing[timing["timing"]]
  flops = causal_attention_flops(batch, heads, seq_len, head_dim, mode)
  return {"mode": mode, "seq_len": seq_len, "batch": batch, **timing, "seconds": seconds,
          "tflops": {name: flops / t / 1e12 for name, t in seconds.items() if name in SOFTMAX},
          "vs_cudnn": {name: _ratio(seconds.get("cudnn"), t) for name, t in seconds.items()},
          "vs_xla": {name: _ratio(seconds.get("xla"), t) for name, t in seconds.items()}}


ATTENTION_RATIOS = (("momentum/cudnn", "vs_cudnn", "momentum"),
                    ("dispatch/cudnn", "vs_cudnn", "dispatch"),
                    ("momentum/xla", "vs_xla", "momentum"),
                    ("lightning/cudnn", "vs_cudnn", "lightning"))


def _cell(value: float | None, width: int, fmt: str) -> str:
  return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"


def format_attention_row(row: Mapping[str, Any]) -> str:
  """Mode, T, B, timing source, milliseconds per candidate, then the ratios of
  ``ATTENTION_RATIOS``."""
  seconds = row["seconds"]
  return (f"{row['mode']:>8}{row['seq_len']:>7}{row['batch']:>4}{row['timing']:>7}"
          + "".join(_cell(None if name not in seconds else 1e3 * seconds[name], 10, ".4g")
                    for name in CANDIDATES)
          + "".join(_cell(row[kind].get(name), 16, ".3f") for _, kind, name in ATTENTION_RATIOS))


def attention_section(seq_lens: Sequence[int], tokens: int, heads: int, head_dim: int,
                      gamma: float, repeats: int, trace_root: pathlib.Path) -> dict[str, Any]:
  """Section (c): forward and forward + backward of every candidate at every T, device-timed
  from a profiler trace (written under ``trace_root``)."""
  print(f"bfloat16 causal, N={heads} H={head_dim}, B = max(1, {tokens} // T), gamma={gamma}, "
        f"median of {repeats}; ms per call, then a/b = t_b / t_a", flush=True)
  print(f"{'mode':>8}{'T':>7}{'B':>4}{'timing':>7}" + "".join(f"{n:>10}" for n in CANDIDATES)
        + "".join(f"{label:>16}" for label, _, _ in ATTENTION_RATIOS), flush=True)
  skipped: dict[str, str] = {}
  rows = []
  for seq_len in seq_lens:
    batch = max(1, tokens // seq_len)
    args = tuple(x.astype(jnp.bfloat16)
                 for x in attention_inputs(seq_len, batch, heads, head_dim, std=0.25))
    for mode in MODES:
      calls = compiled_candidates(mode, gamma, args, skipped)
      timing = profiled_medians(calls, repeats, trace_root / f"{mode.replace('+', '_')}-{seq_len}")
      rows.append(attention_row(mode, seq_len, batch, heads, head_dim, timing))
      print(format_attention_row(rows[-1]), flush=True)
  momentum = [row["vs_cudnn"].get("momentum") for row in rows]
  summary = ("/".join(sorted({row["timing"] for row in rows})) + " timing; momentum/cudnn "
             + ("-" if None in momentum else f"{min(momentum):.3f}-{max(momentum):.3f}")
             + (f"; skipped {', '.join(sorted(skipped))}" if skipped else ""))
  return {"status": "ok", "summary": summary, "shape": dict(tokens=tokens, heads=heads,
          head_dim=head_dim, gamma=gamma, repeats=repeats), "rows": rows,
          "skipped_candidates": skipped}


# Training throughput of the 125M preset.

@dataclasses.dataclass(frozen=True)
class UniformTokens:
  """Uniform random token ids with every position counted: a synthetic task (the
  ``momentum_jax.data.Task`` protocol) for measuring throughput, drawn inside the train step at
  any vocabulary size (the library's tasks sort the vocabulary or hold a V × V table)."""

  vocab_size: int
  seq_len: int

  def sample(self, key: jax.Array, batch_size: int) -> Batch:
    tokens_BxT1 = jax.random.randint(key, (batch_size, self.seq_len + 1), 0, self.vocab_size,
                                     jnp.int32)
    return Batch(tokens_BxT1[:, :-1], tokens_BxT1[:, 1:],
                 jnp.ones((batch_size, self.seq_len), jnp.float32))


def preset_models() -> dict[str, TransformerConfig]:
  """The ``gpu_125m`` preset's models by name."""
  return dict(gpu_125m_config().models)


def train_setups(names: Sequence[str], steps: int, log_every: int, smoke: bool
                 ) -> list[tuple[str, TransformerConfig, TrainConfig]]:
  """``(name, model, train config)`` of the preset's models ``names``: the preset's
  ``TrainConfig`` for ``steps`` steps on its own learning-rate schedule (a decay keeps the
  preset's horizon), logging every ``log_every``, one evaluation batch at the end, no
  TensorBoard; with ``smoke``, the tiny shapes of ``SMOKE_MODEL`` and ``SMOKE_TRAIN``. Softmax,
  the baseline of the ratios, comes first."""
  models = preset_models()
  preset = gpu_125m_config().train
  horizon = {} if preset.lr_decay == "constant" else {"decay_steps": preset.decay_horizon}
  train_config = dataclasses.replace(preset, steps=steps, log_every=log_every, eval_every=0,
                                     eval_batches=1, checkpoint_every=0, tensorboard=False,
                                     **horizon)
  if smoke:
    train_config = dataclasses.replace(train_config, **SMOKE_TRAIN)
  return [(name, dataclasses.replace(models[name], **SMOKE_MODEL) if smoke else models[name],
           train_config) for name in sorted(names, key=lambda name: name != BASELINE_MODEL)]


def _median_of(records: Sequence[Mapping[str, Any]], key: str) -> float | None:
  values = [r[key] for r in records if key in r]
  return statistics.median(values) if values else None


def train_one(model_config: TransformerConfig, train_config: TrainConfig,
              workdir: pathlib.Path) -> tuple[dict[str, Any], Transformer]:
  """One model trained by ``momentum_jax.train.train`` on ``UniformTokens``: its record
  (tokens/s and MFU, the medians of the trainer's log records) and the trained model."""
  device = jax.devices()[0]
  seq_len = model_config.context_len
  start = time.perf_counter()
  result = train(model_config, train_config, UniformTokens(model_config.vocab_size, seq_len),
                 workdir, progress=False)
  seconds = time.perf_counter() - start
  records = [r for r in result.history if "tokens_per_second" in r]
  losses = [r["train_loss"] for r in result.history if "train_loss" in r]
  record = {
      "params": sum(x.size for x in jax.tree.leaves(result.params)), "seq_len": seq_len,
      "tokens_per_step": train_config.batch_size * train_config.accumulate_steps * seq_len,
      "model_flops_per_token": model_flops_per_token(model_config, seq_len),
      "steps": train_config.steps, "throughput_records": len(records),
      "tokens_per_second": _median_of(records, "tokens_per_second"),
      "mfu": _median_of(records, "mfu"), "train_loss_first": losses[0],
      "train_loss_last": losses[-1], "final_eval_loss": result.final_eval["loss"],
      "wall_seconds": seconds}
  dtype = train_config.compute_dtype or model_config.dtype
  if record["mfu"] is None:
    record["mfu_reason"] = (f"no peak FLOP/s is known for {device.device_kind!r} in {dtype}"
                            if peak_flops_per_second(device, dtype) is None
                            else "no throughput record (log_every > steps?)")
  return record, result.model


def _train_summary(name: str, r: Mapping[str, Any]) -> str:
  if "error" in r:
    return f"{name} failed"
  tokens = "-" if r["tokens_per_second"] is None else f"{r['tokens_per_second']:.0f}"
  return f"{name} {tokens} tok/s" + ("" if r["mfu"] is None else f" MFU {r['mfu']:.3f}")


def train_section(setups: Sequence[tuple[str, TransformerConfig, TrainConfig]],
                  workdir: pathlib.Path, trained: dict[str, Transformer]) -> dict[str, Any]:
  """Section (d): each setup trained (:func:`train_one`), its tokens/s against softmax's
  (trained first: ``train_setups``); a model that fails is recorded with its error and the
  others still train. The trained models are put in ``trained``."""
  print(f"{'model':<16}{'params':>12}{'tokens/s':>12}{'MFU':>8}{'vs softmax':>12}"
        f"{'loss first':>12}{'loss last':>11}{'wall s':>9}", flush=True)
  models: dict[str, dict[str, Any]] = {}
  for name, model_config, train_config in setups:
    try:
      models[name], trained[name] = train_one(model_config, train_config, workdir / name)
    except Exception as error:  # out of memory, say: recorded, and the next model still trains
      models[name] = {"error": _one_line(error)}
      print(f"{name:<16}failed: {models[name]['error']}", flush=True)
      continue
    r = models[name]
    baseline = models.get(BASELINE_MODEL, {}).get("tokens_per_second")
    r["tokens_per_second_vs_softmax"] = _ratio(r["tokens_per_second"], baseline)
    print(f"{name:<16}{r['params']:>12,}" + _cell(r["tokens_per_second"], 12, ".0f")
          + _cell(r["mfu"], 8, ".3f") + _cell(r["tokens_per_second_vs_softmax"], 12, ".3f")
          + f"{r['train_loss_first']:>12.3f}{r['train_loss_last']:>11.3f}"
          f"{r['wall_seconds']:>9.1f}", flush=True)
  failed = [name for name, r in models.items() if "error" in r]
  device = jax.devices()[0]
  record = {"summary": "; ".join(_train_summary(name, r) for name, r in models.items()),
            "device_kind": device.device_kind,
            "peak_bytes_in_use": (device.memory_stats() or {}).get("peak_bytes_in_use"),
            "train_config": setups[0][2].to_dict(), "models": models}
  if failed:
    return {"status": "failed", "reason": f"{', '.join(failed)} did not train", **record}
  return {"status": "ok", **record}


# Decoding speed.

def decode_section(trained: Mapping[str, Transformer], batch: int, prompt_len: int,
                   new_tokens: int, repeats: int) -> dict[str, Any]:
  """Section (e): ``generate`` on each trained model, tokens/s from the interleaved median."""
  if not trained:
    return _skipped("no trained model: the train section did not finish")
  vocab_size = next(iter(trained.values())).config.vocab_size
  prompt_BxP = jax.random.randint(jax.random.key(0), (batch, prompt_len), 0, vocab_size)
  calls = {name: functools.partial(generate, model, prompt_BxP, new_tokens)
           for name, model in trained.items()}
  seconds = interleaved_medians(calls, repeats, warmup=1)
  baseline = seconds.get(BASELINE_MODEL)
  models = {name: {"seconds": s, "tokens_per_second": batch * new_tokens / s,
                   "ms_per_step": 1e3 * s / new_tokens,
                   "tokens_per_second_vs_softmax": _ratio(baseline, s)}
            for name, s in seconds.items()}
  print(f"batch {batch}, prompt {prompt_len}, {new_tokens} new tokens, greedy, median of "
        f"{repeats}", flush=True)
  print(f"{'model':<16}{'tokens/s':>12}{'ms/step':>10}{'vs softmax':>12}", flush=True)
  for name, r in models.items():
    print(f"{name:<16}{r['tokens_per_second']:>12.1f}{r['ms_per_step']:>10.3f}"
          + _cell(r["tokens_per_second_vs_softmax"], 12, ".3f"), flush=True)
  return {"status": "ok", "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
          "repeats": repeats, "models": models,
          "summary": "; ".join(f"{n} {r['tokens_per_second']:.0f} tok/s"
                               for n, r in models.items())}


# Dispatch routes.

def _equations(jaxpr: Jaxpr) -> Iterator[JaxprEqn]:
  """Every equation of ``jaxpr`` and, recursively, of the jaxprs in its equations' parameters
  (jitted calls, custom derivatives, loops)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for inner in jaxprs_in_params(eqn.params):
      yield from _equations(inner)


def _kernel_name(params: Mapping[str, Any]) -> str:
  """The name of a ``pallas_call`` (its ``name``, or ``name_and_src_info.name`` in JAX versions
  that keep it there)."""
  name = params.get("name")
  if not isinstance(name, str):
    name = getattr(params.get("name_and_src_info"), "name", None)
  return name or "pallas_call"


def taken_route(fn: Callable[..., Any], *args: Any) -> tuple[str, list[str]]:
  """The implementation the traced program of ``fn(*args)`` runs its attention with, and the
  Pallas kernels in it: "cudnn" (an equation of jax's cuDNN attention), "pallas" (a
  ``pallas_call``; "splash" when one is named so), joined by "+" when several; "xla" when
  none."""
  equations = list(_equations(jax.make_jaxpr(fn)(*args).jaxpr))
  kernels = sorted({_kernel_name(e.params) for e in equations
                    if e.primitive.name == "pallas_call"})
  routes = ["cudnn"] if any(e.primitive.name.startswith(CUDNN_PRIMITIVE)
                            for e in equations) else []
  if kernels:
    routes.append("splash" if any("splash" in k for k in kernels) else "pallas")
  return "+".join(routes) or "xla", kernels


def _route_record(call: str, options: str, fn: Callable[..., Any], args: Sequence[Any],
                  shape: Sequence[int], dtype: Any, expected: str | None) -> dict[str, Any]:
  taken, kernels = taken_route(fn, *args)
  return {"call": call, "options": options, "shape": list(shape), "dtype": jnp.dtype(dtype).name,
          "expected": expected, "taken": taken, "kernels": kernels}


def functional_routes(seq_len: int, batch: int, heads: int, head_dim: int, gamma: float,
                      with_options: bool) -> list[dict[str, Any]]:
  """Routes of softmax, momentum and lightning attention with ``implementation=None`` on
  bfloat16 ``[B, T, N, H]`` inputs; ``with_options`` adds a window, segment ids, sinks, float32
  and a forced ``implementation="pallas"``. Traced on shapes alone: nothing is allocated."""
  def inputs(dtype):
    return tuple(jax.ShapeDtypeStruct((batch, seq_len, heads, head_dim), dtype)
                 for _ in range(3))

  def softmax_family(name: str, attend: Callable[..., jax.Array], options: str, dtype: Any, *,
                     window: int | None = None, segment_ids: jax.ShapeDtypeStruct | None = None,
                     sinks: jax.ShapeDtypeStruct | None = None,
                     implementation: str | None = None) -> dict[str, Any]:
    q, k, v = inputs(dtype)
    expected = softmax_route(implementation, softmax_call(
        q, k, causal=True, window=window, segment_ids=segment_ids, bias=None, sinks=sinks,
        scale=None))

    def fn(q, k, v, segment_ids, sinks):
      return attend(q, k, v, causal=True, window=window, segment_ids=segment_ids, sinks=sinks,
                    implementation=implementation)
    return _route_record(name, options, fn, (q, k, v, segment_ids, sinks), q.shape, dtype,
                         expected)

  momentum = functools.partial(momentum_attention, gamma=gamma, rope=False)
  bf16 = jnp.bfloat16
  records = [softmax_family("softmax_attention", softmax_attention, "causal", bf16),
             softmax_family("momentum_attention", momentum, "causal", bf16)]
  lightning_expected = "pallas" if wants_kernel(None, "lightning") else "xla"
  records.append(_route_record("lightning_attention", "causal",
                               lambda q, k, v: lightning_attention(q, k, v), inputs(bf16),
                               (batch, seq_len, heads, head_dim), bf16, lightning_expected))
  if with_options:
    segment_ids = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
    sinks = jax.ShapeDtypeStruct((heads,), jnp.float32)
    for name, attend in (("softmax_attention", softmax_attention),
                         ("momentum_attention", momentum)):
      records += [softmax_family(name, attend, f"window={seq_len // 4}", bf16,
                                 window=seq_len // 4),
                  softmax_family(name, attend, "segment_ids", bf16, segment_ids=segment_ids),
                  softmax_family(name, attend, "sinks", bf16, sinks=sinks),
                  softmax_family(name, attend, "float32", jnp.float32)]
    records.append(softmax_family("momentum_attention", momentum, "implementation='pallas'",
                                  bf16, implementation="pallas"))
  return records


def model_routes(name: str, model_config: TransformerConfig,
                 train_config: TrainConfig) -> list[dict[str, Any]]:
  """Routes of a train section model's forward pass on a micro-batch (with the dispatch table's
  choice for softmax and momentum attention) and of its single-token decoding step, in the
  train config's compute dtype, as ``train`` builds it. Traced on shapes alone (the model made
  by ``nnx.eval_shape``): nothing is allocated."""
  config = dataclasses.replace(model_config,
                               dtype=train_config.compute_dtype or model_config.dtype,
                               param_dtype=train_config.param_dtype or model_config.param_dtype)
  model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  batch, seq_len = train_config.batch_size, config.context_len
  shape = (batch, seq_len, config.num_heads, config.head_dim)
  expected = None
  if config.attention in ("softmax", "momentum") and not config.learnable_sinks:
    qk = jax.ShapeDtypeStruct(shape, jnp.dtype(config.dtype))
    expected = softmax_route(None, softmax_call(qk, qk, causal=True, window=config.window,
                                                segment_ids=None, bias=None, sinks=None,
                                                scale=None))
  forward = _route_record(f"{name} forward", config.attention,
                          lambda state, tokens: nnx.merge(graphdef, state)(tokens),
                          (state, jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)), shape,
                          config.dtype, expected)
  cache = jax.eval_shape(lambda: init_cache(model, 1, seq_len))
  step = _route_record(
      f"{name} decode step", config.attention,
      lambda state, token, cache: decode(nnx.merge(graphdef, state), token, cache),
      (state, jax.ShapeDtypeStruct((1, 1), jnp.int32), cache),
      (1, 1, config.num_heads, config.head_dim), config.dtype, None)
  return [forward, step]


def routes_section(seq_lens: Sequence[int], tokens: int, heads: int, head_dim: int,
                   gamma: float, setups: Sequence[tuple[str, TransformerConfig, TrainConfig]]
                   ) -> dict[str, Any]:
  """Section (b): the routes of the attention calls of the other sections, each beside the
  dispatch table's choice; failed when a route differs from it."""
  routes = []
  for i, seq_len in enumerate(seq_lens):
    routes += functional_routes(seq_len, max(1, tokens // seq_len), heads, head_dim, gamma,
                                with_options=i == 0)
  for name, model_config, train_config in setups:
    routes += model_routes(name, model_config, train_config)
  print(f"kernels {'interpreted' if default_interpret() else 'native'} on "
        f"{jax.default_backend()}", flush=True)
  print(f"{'call':<34}{'options':<26}{'shape':<22}{'dtype':<10}{'expected':<10}{'taken':<12}"
        "kernels", flush=True)
  for r in routes:
    print(f"{r['call']:<34}{r['options']:<26}{'x'.join(map(str, r['shape'])):<22}"
          f"{r['dtype']:<10}{str(r['expected']):<10}{r['taken']:<12}{','.join(r['kernels'])}",
          flush=True)
  differing = [f"{r['call']} ({r['options']}): {r['taken']}, table {r['expected']}"
               for r in routes if r["expected"] is not None and r["taken"] != r["expected"]]
  counts = {taken: sum(r["taken"] == taken for r in routes)
            for taken in sorted({r["taken"] for r in routes})}
  summary = (f"{len(routes)} calls: " + ", ".join(f"{k} {n}" for k, n in counts.items())
             + f"; {len(differing)} differ from the table")
  record = {"summary": summary, "interpret": default_interpret(), "routes": routes}
  if differing:
    return {"status": "failed", "reason": "; ".join(differing), **record}
  return {"status": "ok", **record}


# The run.

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  parser.add_argument("--output", type=pathlib.Path,
                      default=pathlib.Path("runs/bench/gpu_acceptance.json"))
  parser.add_argument("--trace-dir", type=pathlib.Path, default=None,
                      help="keep the profiler traces here (default: a temporary folder)")
  parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096, 8192])
  parser.add_argument("--tokens", type=int, default=16384)
  parser.add_argument("--heads", type=int, default=16)
  parser.add_argument("--head-dim", type=int, default=128)
  parser.add_argument("--gamma", type=float, default=0.5)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--train-models", nargs="+", choices=sorted(preset_models()),
                      default=[BASELINE_MODEL, "momentum_g0.5"])
  parser.add_argument("--train-steps", type=int, default=20)
  parser.add_argument("--log-every", type=int, default=5)
  parser.add_argument("--decode-batch", type=int, default=8)
  parser.add_argument("--prompt-len", type=int, default=128)
  parser.add_argument("--new-tokens", type=int, default=128)
  parser.add_argument("--native-timeout", type=float, default=300.0)
  parser.add_argument("--cpu-smoke", action="store_true",
                      help="every section at tiny sizes on the CPU: a check of the script")
  args = parser.parse_args(argv)
  if args.cpu_smoke:
    for key, value in {**SMOKE_ATTENTION, **SMOKE_RUN}.items():
      setattr(args, key, value)
  for name in ("tokens", "heads", "head_dim", "repeats", "train_steps", "log_every",
               "decode_batch", "prompt_len", "new_tokens"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
  if min(args.seq_lens) < 1:
    parser.error(f"--seq-lens must be >= 1, got {args.seq_lens}")
  if args.log_every > args.train_steps:
    parser.error(f"--log-every={args.log_every} must be at most --train-steps="
                 f"{args.train_steps}: the throughput is read from the log records")
  return args


def print_summary(sections: Mapping[str, Mapping[str, Any]]) -> None:
  """The closing table: one line per section with its status, seconds and summary."""
  print(f"\n{'section':<22}{'status':<9}{'seconds':>8}  summary")
  for name, record in sections.items():
    print(f"{name:<22}{record['status']:<9}{record['seconds']:>8.1f}  {record['summary']}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  if args.cpu_smoke:
    jax.config.update("jax_platforms", "cpu")
  start = time.perf_counter()
  command = " ".join([PROG, *map(str, sys.argv[1:] if argv is None else argv)])
  result: dict[str, Any] = {"command": command, "cpu_smoke": args.cpu_smoke, "sections": {}}
  args.output.parent.mkdir(parents=True, exist_ok=True)

  def record(name: str, section: Callable[[], dict[str, Any]]) -> None:
    result["sections"][name] = run_section(name, section)
    result["seconds"] = time.perf_counter() - start
    args.output.write_text(json.dumps(result, indent=2, default=str))

  def setups() -> list[tuple[str, TransformerConfig, TrainConfig]]:
    return train_setups(args.train_models, args.train_steps, args.log_every, args.cpu_smoke)

  # First, while this process has not opened the GPU.
  record("native_kernel_tests",
         lambda: native_kernel_tests(args.native_timeout, cpu_only=args.cpu_smoke))
  result["hardware"] = hardware()
  record("dispatch_routes", lambda: routes_section(args.seq_lens, args.tokens, args.heads,
                                                   args.head_dim, args.gamma, setups()))
  trained: dict[str, Transformer] = {}
  with tempfile.TemporaryDirectory() as scratch:
    trace_root = args.trace_dir or pathlib.Path(scratch) / "traces"
    record("attention", lambda: attention_section(args.seq_lens, args.tokens, args.heads,
                                                  args.head_dim, args.gamma, args.repeats,
                                                  trace_root))
    record("train", lambda: train_section(setups(), pathlib.Path(scratch) / "train", trained))
  record("decode", lambda: decode_section(trained, args.decode_batch, args.prompt_len,
                                          args.new_tokens, args.repeats))
  print_summary(result["sections"])
  print(f"total {result['seconds']:.1f} s; wrote {args.output}")
  return result


if __name__ == "__main__":
  sys.exit(int(any(s["status"] == "failed" for s in main()["sections"].values())))
