"""Tests of the one-pass dense-layer statistics: values against explicit methods, zero cost."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from momentum_jax.nn import Dense, Transformer, TransformerConfig, value_grad_and_layer_stats
from momentum_jax.nn import transformer as transformer_module

CONFIG = TransformerConfig(vocab_size=19, context_len=11, num_layers=1, d_model=12, num_heads=2,
                           head_dim=6, mlp_dim=14, tie_embeddings=False)


def _tokens(batch=3, seq=7):
  return jax.random.randint(jax.random.key(1), (batch, seq), 0, CONFIG.vocab_size)


def _loss(model, tokens):
  logits = model(tokens)[:, :-1]
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def _biased_twin(model):
  """The model with every Dense given a zero bias: same function, and ∂L/∂b = Σ_tokens ∂L/∂y."""
  def with_bias(*args, use_bias, **kwargs):
    del use_bias
    return Dense(*args, use_bias=True, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(transformer_module, "Dense", with_bias)
    twin = Transformer(CONFIG, rngs=nnx.Rngs(5))
  nnx.update(twin, nnx.state(model, nnx.Param))
  return twin


@pytest.mark.slow
def test_output_grad_sum_is_the_bias_gradient_and_input_mean_the_hooked_mean():
  model = Transformer(CONFIG, rngs=nnx.Rngs(0))
  tokens = _tokens()
  loss, _, stats = value_grad_and_layer_stats(_loss, model, tokens)

  twin = _biased_twin(model)
  twin_loss, twin_grads = nnx.value_and_grad(_loss)(twin, tokens)
  np.testing.assert_allclose(loss, twin_loss, rtol=1e-6)
  expected = {"blocks.0.attn.q_proj", "blocks.0.attn.k_proj", "blocks.0.attn.v_proj",
              "blocks.0.attn.o_proj", "blocks.0.mlp.up", "blocks.0.mlp.down", "unembed"}
  assert set(stats) == {name + ".kernel" for name in expected}
  flat_grads = {".".join(map(str, path)): v[...] for path, v in nnx.to_flat_state(twin_grads)}
  for name in expected:
    g = stats[name + ".kernel"].output_grad_sum
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(g, flat_grads[name + ".bias"], rtol=1e-5, atol=1e-7)

  _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_z",
                                                        "ln_final.hook_normalized"])
  z_BxTxF = cache["blocks.0.attn.hook_z"].reshape(3, 7, -1)
  np.testing.assert_allclose(stats["blocks.0.attn.o_proj.kernel"].input_mean,
                             z_BxTxF.mean(axis=(0, 1)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["unembed.kernel"].input_mean,
                             cache["ln_final.hook_normalized"].mean(axis=(0, 1)),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_parameter_gradients_unchanged_and_aux_passed_through():
  model = Transformer(CONFIG, rngs=nnx.Rngs(0))
  tokens = _tokens()
  (loss, aux), grads, _ = value_grad_and_layer_stats(
      lambda m, t: (_loss(m, t), {"n": t.size}), model, tokens, has_aux=True)
  ref_loss, ref_grads = nnx.value_and_grad(_loss)(model, tokens)
  assert aux == {"n": 21}
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               grads, ref_grads)


def test_under_jit_and_repeated_layer_calls():
  class Twice(nnx.Module):
    def __init__(self):
      self.layer = Dense(3, 2, rngs=nnx.Rngs(0))
      self.unused = Dense(4, 5, rngs=nnx.Rngs(1))

    def __call__(self, x, y):
      return (self.layer(x) ** 2).sum() + 3.0 * self.layer(y).sum()

  model = Twice()
  x, y = jnp.arange(12.0).reshape(2, 2, 3), -jnp.ones((5, 3))
  _, grads, stats = nnx.jit(
      lambda m, x, y: value_grad_and_layer_stats(lambda m: m(x, y), m))(model, x, y)
  expected_g = (2 * model.layer(x)).sum(axis=(0, 1)) + 3.0 * 5
  np.testing.assert_allclose(stats["layer.kernel"].output_grad_sum, expected_g, rtol=1e-6)
  np.testing.assert_allclose(stats["layer.kernel"].output_grad_sum, grads["layer"]["bias"][...],
                             rtol=1e-6)
  np.testing.assert_allclose(stats["layer.kernel"].input_mean,
                             (x.reshape(-1, 3).sum(0) + y.sum(0)) / 9, rtol=1e-6)
  np.testing.assert_array_equal(stats["unused.kernel"].input_mean, np.zeros(4))
  np.testing.assert_array_equal(stats["unused.kernel"].output_grad_sum, np.zeros(5))


def test_dense_is_linear_and_costs_nothing_outside_the_helper(monkeypatch):
  """Same parameter tree and values as with nnx.Linear, the same outputs and gradients, and the
  same traced program but for one reshape of the input and one of the output per dense layer."""
  model = Transformer(CONFIG, rngs=nnx.Rngs(0))
  monkeypatch.setattr(transformer_module, "Dense", nnx.Linear)
  linear_model = Transformer(CONFIG, rngs=nnx.Rngs(0))
  params, linear_params = nnx.state(model, nnx.Param), nnx.state(linear_model, nnx.Param)
  assert jax.tree.structure(params) == jax.tree.structure(linear_params)
  jax.tree.map(np.testing.assert_array_equal, params, linear_params)

  tokens = _tokens()
  loss, grads = nnx.value_and_grad(_loss)(model, tokens)
  linear_loss, linear_grads = nnx.value_and_grad(_loss)(linear_model, tokens)
  np.testing.assert_allclose(loss, linear_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               nnx.state(grads), nnx.state(linear_grads))

  count = lambda m: len(jax.make_jaxpr(lambda s: nnx.merge(nnx.graphdef(m), s)(tokens))(
      nnx.state(m)).eqns)
  num_dense = sum(isinstance(node, Dense) for _, node in nnx.iter_graph(model))
  assert num_dense == 7  # q, k, v, o, up, down and the untied unembedding
  assert count(model) == count(linear_model) + 2 * num_dense
  n_with_stats = len(jax.make_jaxpr(
      lambda s: value_grad_and_layer_stats(_loss, nnx.merge(nnx.graphdef(model), s), tokens)[0])(
          nnx.state(model)).eqns)
  n_grad = len(jax.make_jaxpr(
      lambda s: nnx.value_and_grad(_loss)(nnx.merge(nnx.graphdef(model), s), tokens)[0])(
          nnx.state(model)).eqns)
  assert n_with_stats > n_grad
