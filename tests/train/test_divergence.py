"""A diverging run stops at its first non-finite loss or gradient norm, naming the step and the
last finite loss, and never saves a non-finite checkpoint: the newest checkpoint stays the last
good one, and a rerun resumes from it."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from momentum_jax.data import InductionTask
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import (
    METRICS_FILE, NonFiniteStateError, TrainConfig, TrainingDivergedError, train)
from momentum_jax.train.checkpoint import checkpoint_manager, save
from momentum_jax.train.divergence import DivergenceWatch

TASK = InductionTask(vocab_size=16, segment_len=4, max_gap=4)
MODEL = TransformerConfig(vocab_size=16, context_len=TASK.seq_len, num_layers=1, d_model=16,
                          num_heads=2)
# The run (a learning rate of 1e6: NaN from step 2) saving every step, and a slower
# divergence between saves (every 3 steps). Logged only at step 1000, so nothing but the check
# before each save looks at the losses.
DIVERGING = {
    "lr-1e6": TrainConfig(steps=40, batch_size=4, learning_rate=1e6, eval_every=0, eval_batches=1,
                          checkpoint_every=1, log_every=1000, tensorboard=False),
    "lr-10": TrainConfig(steps=40, batch_size=4, learning_rate=10.0, eval_every=0,
                         eval_batches=1, checkpoint_every=3, log_every=1000, tensorboard=False),
}


def _watched(losses, norms):
  watch = DivergenceWatch()
  for step, (loss, norm) in enumerate(zip(losses, norms), start=1):
    watch.stepped(step, {"train_loss": jnp.float32(loss), "grad_norm": jnp.float32(norm)})
  return watch


@pytest.mark.parametrize("losses, norms, what", [
    ([2.5, 2.25, np.nan, 1.0], [1.0, 1.0, 1.0, 1.0], "train_loss=nan, grad_norm=1.0"),
    ([2.5, 2.25, 2.0, 1.0], [1.0, 1.0, np.inf, 1.0], "train_loss=2.0, grad_norm=inf"),
    ([2.5, 2.25, -np.inf, np.nan], [1.0, 1.0, 1.0, 1.0], "train_loss=-inf, grad_norm=1.0"),
], ids=["nan-loss", "inf-grad-norm", "first-of-several"])
def test_the_watch_names_the_first_non_finite_step_and_the_last_finite_loss(losses, norms, what):
  watch = _watched(losses, norms)
  with pytest.raises(TrainingDivergedError) as info:
    watch.check(newest_checkpoint=2)
  error = info.value
  assert (error.step, error.last_finite_step, error.last_finite_loss) == (3, 2, 2.25)
  assert error.newest_checkpoint == 2
  assert str(error).startswith(f"training diverged at step 3: {what}; the last finite loss was "
                               "2.25 at step 2. Nothing from step 3 on was saved: the newest "
                               "checkpoint, step 2, is where a rerun resumes")


def test_the_last_finite_loss_carries_across_checks():
  watch = _watched([3.0, 2.0], [1.0, 1.0])
  watch.check(newest_checkpoint=None)
  watch.stepped(3, {"train_loss": jnp.float32(np.nan), "grad_norm": jnp.float32(1.0)})
  with pytest.raises(TrainingDivergedError, match="at step 3: .* the last finite loss was 2 at "
                     "step 2. .* no checkpoint was saved"):
    watch.check(newest_checkpoint=None)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_save_refuses_a_non_finite_state_and_writes_nothing(tmp_path, dtype):
  manager = checkpoint_manager(tmp_path)
  state = {"params": {"b": jnp.zeros(3, dtype), "w": jnp.ones((4, 4), dtype).at[1, 2].set(jnp.inf)},
           "opt_state": {"count": jnp.int32(7)}, "step": jnp.int32(5)}
  with pytest.raises(NonFiniteStateError) as info:
    save(manager, 5, state, {"version": "test"})
  assert str(info.value) == (f"refused to save step 5 in {manager.directory}: 1 array(s) of the "
                             "state hold NaN or ±inf, first ['params']['w']")
  manager.wait_until_finished()
  assert manager.all_steps() == [] and not (tmp_path / "checkpoints" / "5").exists()
  manager.close()


def _restored_state(workdir, step):
  manager = checkpoint_manager(workdir)
  try:
    return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  finally:
    manager.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DIVERGING))
def test_a_diverging_run_stops_before_a_non_finite_checkpoint_and_resumes_from_the_last_good(
    tmp_path, capsys, name):
  cfg = DIVERGING[name]
  with pytest.raises(TrainingDivergedError) as info:
    train(MODEL, cfg, TASK, tmp_path, progress=False)
  error = info.value
  message = str(error)
  assert f"training diverged at step {error.step}: train_loss=" in message
  assert error.last_finite_step == error.step - 1
  assert (f"the last finite loss was {error.last_finite_loss:.6g} at step {error.step - 1}"
          in message)

  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
  assert saved and saved[-1] < error.step and error.newest_checkpoint == saved[-1]
  assert f"the newest checkpoint, step {saved[-1]}, is where a rerun resumes" in message
  for step in saved:
    for leaf in jax.tree.leaves(_restored_state(tmp_path, step)):
      leaf = np.asarray(leaf)
      assert not np.issubdtype(leaf.dtype, np.inexact) or np.isfinite(leaf).all(), step

  # A rerun resumes from the newest checkpoint and, logging every step now, stops at the same
  # step, its records before it all finite.
  capsys.readouterr()
  with pytest.raises(TrainingDivergedError) as again:
    train(MODEL, dataclasses.replace(cfg, log_every=1), TASK, tmp_path, progress=False)
  assert f"resumed {tmp_path.name} from step {saved[-1]} of 40" in capsys.readouterr().out
  assert again.value.step == error.step
  records = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
  assert [r["step"] for r in records] == list(range(saved[-1] + 1, error.step))
  assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["grad_norm"]) for r in records)
  if records:
    assert records[-1]["train_loss"] == pytest.approx(error.last_finite_loss, rel=1e-6)
