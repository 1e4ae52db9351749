"""``token_loss`` and ``optimizer_step``: the loss and the update that ensembles and benchmarks
jit, vmap or compile themselves."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from momentum_jax.data import InductionTask
from momentum_jax.nn import Transformer, TransformerConfig
from momentum_jax.train import masked_cross_entropy, optimizer_step, token_loss


@pytest.mark.slow
def test_step_is_the_optimizer_update_on_the_gradient_of_the_masked_token_loss():
  task = InductionTask(vocab_size=16, segment_len=4, max_gap=2)
  config = TransformerConfig(vocab_size=16, context_len=task.seq_len, num_layers=1, d_model=16,
                             num_heads=2, mlp_dim=0, attention="momentum",
                             attention_params={"gamma": 0.5})
  model = Transformer(config, rngs=nnx.Rngs(0))
  batch = task.sample(jax.random.key(1), 4)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  loss = token_loss(graphdef)
  value, (sums, _) = loss(params, rest, batch)
  np.testing.assert_allclose(value, masked_cross_entropy(model(batch.tokens), batch), rtol=1e-6)

  tx = optax.sgd(0.1)
  new_params, _, _, metrics = jax.jit(optimizer_step(loss, tx))(params, rest, tx.init(params),
                                                                batch)
  grads = jax.grad(lambda p: loss(p, rest, batch)[0])(params)
  expected = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               new_params, expected)
  np.testing.assert_allclose(metrics["loss"], value, rtol=1e-6)
  np.testing.assert_allclose(metrics["accuracy"],
                             sums["correct_sum"] / jnp.maximum(sums["count"], 1.0), rtol=1e-6)
