"""train() in fresh processes: resume after SIGKILL, and data parallelism on 4 CPU devices.

Each test starts a Python subprocess (paying a JAX import and a compile), because SIGKILL must hit
a real process and ``XLA_FLAGS`` must be set before JAX is imported.
"""

import dataclasses
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from train_harness import assert_same_params, kill_after_a_checkpoint, train_losses, worker_env

from momentum_jax.data import InductionTask
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig, train

TASK = InductionTask(vocab_size=16, segment_len=4, max_gap=4)
MODEL = TransformerConfig(vocab_size=16, context_len=TASK.seq_len, num_layers=1, d_model=32,
                          num_heads=2)
TRAIN = TrainConfig(steps=60, batch_size=8, learning_rate=1e-2, eval_every=0, eval_batches=1,
                    checkpoint_every=10, log_every=1)

# Trains the configuration given as JSON in argv[1].
_KILLABLE_WORKER = """
import json, sys
from momentum_jax.data import InductionTask
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig, train

spec = json.loads(sys.argv[1])
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


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path):
  workdir = tmp_path / "killed"
  killed_after = kill_after_a_checkpoint(_KILLABLE_WORKER, [_spec(TRAIN, workdir)], workdir,
                                         sleep_s=0.05, timeout_s=180)
  assert killed_after < TRAIN.steps, "the worker finished before it was killed"

  resumed = train(MODEL, TRAIN, TASK, workdir, progress=False)
  straight = train(MODEL, TRAIN, TASK, tmp_path / "straight", progress=False)
  assert_same_params(resumed.params, straight.params)
  steps = [r["step"] for r in resumed.history if "train_loss" in r]
  assert steps == list(range(1, TRAIN.steps + 1))  # killed-run records past the checkpoint dropped
  assert train_losses(resumed.history) == train_losses(straight.history)


@pytest.mark.slow
def test_four_devices_match_one_device(tmp_path):
  cfg = dataclasses.replace(TRAIN, steps=12, log_every=2, checkpoint_every=0, eval_batches=2)
  proc = subprocess.run(
      [sys.executable, "-c", _DATA_PARALLEL_WORKER, _spec(cfg, tmp_path)],
      env=worker_env(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"),
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
