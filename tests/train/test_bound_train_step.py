"""The training loop's step with its static arguments bound once computes exactly what
``train_step`` computes with them passed on every call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentum_jax.data import InductionTask
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig, batch_sharding, make_mesh
from momentum_jax.train.step import bound_train_step, init_train_state, step_config, train_step

TASK = InductionTask(vocab_size=16, segment_len=4, max_gap=4)
MODEL = TransformerConfig(vocab_size=16, context_len=TASK.seq_len, num_layers=2, d_model=16,
                          num_heads=2, mlp_dim=32)
CFG = TrainConfig(steps=10, batch_size=4, optimizer="adamw", weight_decay=0.1,
                  weight_decay_mask="matrices", warmup_steps=2, lr_decay="cosine",
                  grad_clip_norm=1.0, tensorboard=False)


def _fresh():
  mesh = make_mesh((1, 1, 1), jax.devices()[:1])
  return init_train_state(MODEL, CFG, mesh, batch_sharding(mesh, CFG.batch_size),
                          jax.random.key(0))


@pytest.mark.slow
def test_the_bound_step_equals_train_step_bit_for_bit():
  graphdef, state, placement = _fresh()
  static = dict(graphdef=graphdef, cfg=step_config(CFG), task=TASK, placement=placement)
  step = bound_train_step(**static)
  data_key = jax.random.key(1)
  bound = (state.params, state.opt_state, state.rest)
  _, again, _ = _fresh()
  passed = (again.params, again.opt_state, again.rest)
  for i in range(3):
    *bound, bound_metrics = step(*bound, data_key, np.int32(i))
    *passed, passed_metrics = train_step(*passed, data_key, jnp.int32(i), **static)
    for a, b in zip(jax.tree.leaves((bound, bound_metrics)),
                    jax.tree.leaves((passed, passed_metrics)), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
