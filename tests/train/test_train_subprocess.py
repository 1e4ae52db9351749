"""train() in fresh processes: resume after SIGKILL, and data parallelism on 4 CPU devices.

Each test starts a Python subprocess (paying a JAX import and a compile), because SIGKILL must hit
a real process and ``XLA_FLAGS`` must be set before JAX is imported.
"""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from momentum_jax.data import InductionTask
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import METRICS_FILE, TrainConfig, train

REPO = pathlib.Path(__file__).resolve().parents[2]
TASK = InductionTask(vocab_size=16, segment_len=4, max_gap=4)
MODEL = TransformerConfig(vocab_size=16, context_len=TASK.seq_len, num_layers=1, d_model=32,
                          num_heads=2)
TRAIN = TrainConfig(steps=60, batch_size=8, learning_rate=1e-2, eval_every=0, eval_batches=1,
                    checkpoint_every=10, log_every=1)

# Trains the configuration given as JSON in argv[1]; every metrics record is followed by a short
# sleep so that the parent can kill the run between checkpoints.
_KILLABLE_WORKER = """
import json, sys, time
from momentum_jax.data import InductionTask
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig, train
from momentum_jax.train.metrics_log import MetricsLog

spec = json.loads(sys.argv[1])
append = MetricsLog.append
def slow_append(self, step, values):
  append(self, step, values)
  time.sleep(0.05)
MetricsLog.append = slow_append
train(TransformerConfig.from_dict(spec["model"]), TrainConfig(**spec["train"]),
      InductionTask(**spec["task"]), spec["workdir"], progress=False)
"""

_DATA_PARALLEL_WORKER = """
import json, sys
import jax, numpy as np
from jax.sharding import Mesh
from momentum_jax.data import InductionTask
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig, train

spec = json.loads(sys.argv[1])
model, cfg = TransformerConfig.from_dict(spec["model"]), TrainConfig(**spec["train"])
task = InductionTask(**spec["task"])
assert jax.device_count() == 4, jax.devices()
mesh4 = Mesh(np.asarray(jax.devices()), ("data",))
one = train(model, cfg, task, spec["workdir"] + "/one", progress=False)
four = train(model, cfg, task, spec["workdir"] + "/four", mesh=mesh4, progress=False)
try:
  train(model, cfg.__class__(**{**spec["train"], "batch_size": 6}), task,
        spec["workdir"] + "/bad", mesh=mesh4, progress=False)
  bad_batch_error = ""
except ValueError as e:
  bad_batch_error = str(e)
print(json.dumps({
    "losses_one": [r["train_loss"] for r in one.history if "train_loss" in r],
    "losses_four": [r["train_loss"] for r in four.history if "train_loss" in r],
    "eval_one": one.final_eval, "eval_four": four.final_eval,
    "max_param_diff": max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params))),
    "param_devices": sorted({len(x.sharding.device_set) for x in jax.tree.leaves(four.params)}),
    "bad_batch_error": bad_batch_error,
}))
"""


def _spec(train_config: TrainConfig, workdir: pathlib.Path) -> str:
  return json.dumps({"model": MODEL.to_dict(), "train": train_config.to_dict(),
                     "task": dataclasses.asdict(TASK), "workdir": str(workdir)})


def _env(**extra: str) -> dict[str, str]:
  path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
  return {**os.environ, "PYTHONPATH": path, **extra}


def _last_logged_step(workdir: pathlib.Path) -> int:
  try:
    lines = (workdir / METRICS_FILE).read_text().splitlines()
    return json.loads(lines[-1])["step"] if lines else 0
  except (FileNotFoundError, json.JSONDecodeError):
    return 0


def _finished_checkpoints(workdir: pathlib.Path) -> list[int]:
  root = workdir / "checkpoints"
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path):
  workdir = tmp_path / "killed"
  proc = subprocess.Popen([sys.executable, "-c", _KILLABLE_WORKER, _spec(TRAIN, workdir)],
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 180
  killed_after = None
  while time.monotonic() < deadline and proc.poll() is None:
    checkpoints = _finished_checkpoints(workdir)
    if checkpoints and _last_logged_step(workdir) >= checkpoints[-1] + 3:
      proc.send_signal(signal.SIGKILL)
      killed_after = _last_logged_step(workdir)
      break
    time.sleep(0.01)
  proc.wait()
  output = proc.stdout.read().decode()
  assert killed_after is not None, f"worker ended (rc={proc.returncode}) before the kill:\n{output}"
  assert proc.returncode == -signal.SIGKILL
  assert killed_after < TRAIN.steps, "the worker finished before it was killed"

  resumed = train(MODEL, TRAIN, TASK, workdir, progress=False)
  straight = train(MODEL, TRAIN, TASK, tmp_path / "straight", progress=False)
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params), strict=True):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  steps = [r["step"] for r in resumed.history if "train_loss" in r]
  assert steps == list(range(1, TRAIN.steps + 1))  # killed-run records past the checkpoint dropped
  assert [r["train_loss"] for r in resumed.history if "train_loss" in r] == [
      r["train_loss"] for r in straight.history if "train_loss" in r]


@pytest.mark.slow
def test_four_devices_match_one_device(tmp_path):
  cfg = dataclasses.replace(TRAIN, steps=12, log_every=2, checkpoint_every=0, eval_batches=2)
  proc = subprocess.run(
      [sys.executable, "-c", _DATA_PARALLEL_WORKER, _spec(cfg, tmp_path)],
      env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert len(result["losses_one"]) == 6
  np.testing.assert_allclose(result["losses_four"], result["losses_one"], rtol=1e-5, atol=1e-5)
  for key in ("loss", "accuracy"):
    assert result["eval_four"][key] == pytest.approx(result["eval_one"][key], rel=1e-5, abs=1e-5)
  assert result["max_param_diff"] < 1e-5
  assert result["param_devices"] == [4]  # replicated over the whole mesh
  assert "batch_size=6 must be divisible" in result["bad_batch_error"]
