"""Per-layer attention and γ, learned γ and the gain-normalised shear: configs build, train,
checkpoint and resume; the learned γ's gradient equals finite differences; the gain-normalised
shear matches its formula on hand values; bad per-layer configs are named."""

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from momentum_jax.attention import momentum_attention, momentum_shear
from momentum_jax.attention.momentum import gain_normalize
from momentum_jax.data import InductionTask
from momentum_jax.nn import Transformer, TransformerConfig
from momentum_jax.train import TrainConfig, train

TASK = InductionTask(vocab_size=16, segment_len=4, max_gap=2)
BASE = TransformerConfig(vocab_size=16, context_len=TASK.seq_len, num_layers=2, d_model=32,
                         num_heads=4, num_kv_heads=2)
CONFIGS = {
    "gamma_per_layer": dataclasses.replace(
        BASE, attention="momentum", attention_params=[{"gamma": 0.25}, {"gamma": (1.0, 0.0)}]),
    "hybrid": dataclasses.replace(BASE, attention=["momentum", "softmax"],
                                  attention_params=[{"gamma": 0.5}, {}]),
    "learned_gamma": dataclasses.replace(BASE, attention=["momentum_learned", "linear"],
                                         attention_init={"gamma": 0.3}),
    "gain_normalised": dataclasses.replace(
        BASE, attention="momentum", attention_params={"gamma": 2.0, "normalize_gain": True}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_per_layer_configs_train_checkpoint_and_resume(tmp_path, name):
  config = CONFIGS[name]
  assert TransformerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
  run = lambda steps: train(config, TrainConfig(steps=steps, batch_size=8, log_every=2,
                                                eval_batches=1, checkpoint_every=2,
                                                tensorboard=False),
                            TASK, tmp_path / "run", progress=False)
  straight = train(config, TrainConfig(steps=4, batch_size=8, log_every=2, eval_batches=1,
                                       tensorboard=False), TASK, tmp_path / "straight",
                   progress=False)
  run(2)
  resumed = run(4)
  assert np.isfinite(resumed.final_eval["loss"])
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  if name == "learned_gamma":
    logged = resumed.history[-2]
    assert set(k for k in logged if k.startswith("gamma/")) == {"gamma/layer0/0", "gamma/layer0/1"}
    assert all(0.2 < logged[f"gamma/layer0/{j}"] < 0.4 for j in (0, 1))


def test_layers_get_their_own_variant_and_gamma():
  model = Transformer(CONFIGS["hybrid"], rngs=nnx.Rngs(0))
  assert [b.attn.config.attention for b in model.blocks] == ["momentum", "softmax"]
  per_layer = CONFIGS["gamma_per_layer"]
  assert dict(per_layer.layer(1).attention_params) == {"gamma": (1.0, 0.0)}
  learned = Transformer(CONFIGS["learned_gamma"], rngs=nnx.Rngs(0))
  np.testing.assert_allclose(learned.learned_attention_values()["gamma/layer0/1"], 0.3, rtol=1e-6)
  assert "gamma" not in learned.blocks[1].attn.variant_params


@pytest.mark.slow
def test_learned_gamma_gradient_equals_finite_differences():
  """d loss / d θ of the stored γ parameter (γ = softplus(θ)) by autodiff against central
  differences through the whole model (float32, so a loose tolerance)."""
  config = dataclasses.replace(BASE, num_layers=1, attention="momentum_learned",
                               attention_init={"gamma": 0.7})
  graphdef, params, rest = nnx.split(Transformer(config, rngs=nnx.Rngs(1)), nnx.Param, ...)
  tokens = jax.random.randint(jax.random.key(2), (4, TASK.seq_len), 0, 16)
  is_gamma = lambda path: "gamma" in jax.tree_util.keystr(path)

  def loss(theta_K):
    p = jax.tree_util.tree_map_with_path(lambda path, x: theta_K if is_gamma(path) else x, params)
    logits = nnx.merge(graphdef, p, rest)(tokens)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 3])

  (theta,) = [x for path, x in jax.tree_util.tree_leaves_with_path(params) if is_gamma(path)]
  grad = jax.grad(loss)(theta)
  assert np.all(np.abs(np.asarray(grad)) > 1e-4)
  eps = 5e-3
  for j in range(theta.shape[0]):
    step = jnp.zeros_like(theta).at[j].set(eps)
    numeric = (loss(theta + step) - loss(theta - step)) / (2 * eps)
    np.testing.assert_allclose(grad[j], numeric, rtol=3e-2, atol=1e-5)


def test_gain_normalised_shear_matches_its_formula_on_hand_values():
  # x = (1, 3, 2) on one head, γ = 1, zero boundary: shear (2·1 − 0, 2·3 − 1, 2·2 − 3) = (2, 5, 1),
  # divided by √(1 + 2·1·2) = √5.
  x = jnp.asarray([1.0, 3.0, 2.0])[None, :, None, None]
  q_hat, k_hat = gain_normalize(x, x, 1.0)
  np.testing.assert_allclose(momentum_shear(q_hat, 1.0)[0, :, 0, 0],
                             np.asarray([2.0, 5.0, 1.0]) / np.sqrt(5.0), rtol=1e-6)
  np.testing.assert_allclose(k_hat, x / np.sqrt(5.0), rtol=1e-6)
  # Per kv head: γ = (0, 3) gives divisors 1 and √(1 + 2·3·4) = 5; query heads follow their group.
  q = jnp.ones((1, 1, 4, 2))
  k = jnp.ones((1, 1, 2, 2))
  q_n, k_n = gain_normalize(q, k, jnp.asarray([0.0, 3.0]))
  np.testing.assert_allclose(q_n[0, 0, :, 0], [1.0, 1.0, 0.2, 0.2], rtol=1e-6)
  np.testing.assert_allclose(k_n[0, 0, :, 0], [1.0, 0.2], rtol=1e-6)
  # White noise keeps its power through the normalised shear (long sequence, within 2 %).
  noise = jax.random.normal(jax.random.key(0), (1, 200_000, 1, 1))
  sheared = momentum_shear(gain_normalize(noise, noise, 2.0)[0], 2.0)
  assert abs(float(jnp.mean(sheared**2)) / float(jnp.mean(noise**2)) - 1.0) < 0.02


def test_normalised_momentum_attention_is_the_attention_of_normalised_inputs():
  q, k, v = jax.random.normal(jax.random.key(3), (3, 1, 9, 2, 8))
  gamma = jnp.asarray([0.5, 2.0])
  q_n, k_n = gain_normalize(q, k, gamma)
  np.testing.assert_allclose(
      momentum_attention(q, k, v, gamma=gamma, normalize_gain=True, rope=False),
      momentum_attention(q_n, k_n, v, gamma=gamma, rope=False), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("changes, match", [
    ({"attention": "momentum", "attention_params": [{"gamma": 0.5}] * 3},
     "attention_params per layer must have num_layers=2 entries, got 3"),
    ({"attention": ["momentum", "softmax", "softmax"], "attention_params": [{"gamma": 1.0}, {}]},
     "attention per layer must have num_layers=2 entries, got 3"),
    ({"attention": ["momentum", "nope"], "attention_params": [{"gamma": 1.0}, {}]},
     "layer 1: unknown attention variant 'nope'"),
    ({"attention": ["momentum", "softmax"], "attention_params": [{}, {}]},
     "layer 0: attention='momentum' needs attention_params ['gamma']"),
    ({"attention": "softmax", "attention_init": {"gamma": 0.5}},
     "attention_init names 'gamma', which no layer learns"),
    ({"attention": "momentum_learned", "attention_init": {"gamma": float("nan")}},
     "attention_init['gamma'] must be a finite number, got nan"),
    ({"attention": "momentum", "attention_params": {"gamma": 0.5, "normalize_gain": 1}},
     "normalize_gain must be a bool, got normalize_gain=1"),
])
def test_bad_per_layer_configs_are_named(changes, match):
  with pytest.raises((ValueError, TypeError), match=re.escape(match)):
    dataclasses.replace(BASE, **changes)
