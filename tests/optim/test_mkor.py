"""Tests of MKOR and MKOR-H against a float64 NumPy oracle written from the update rule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from momentum_jax.nn import Transformer, TransformerConfig, value_grad_and_layer_stats
from momentum_jax.optim import mkor, mkor_h

D_IN, D_OUT = 5, 3


def _oracle_step(f_inv, v, damping=0.05):
  """(P⁻¹ + v vᵀ)⁻¹, P = (1 − ρ) F⁻¹ + ρ I, by explicit inversion in float64."""
  p = (1 - damping) * f_inv + damping * np.eye(len(v))
  return np.linalg.inv(np.linalg.inv(p) + np.outer(v, v))


def _params(bias=False, seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  dense = {"kernel": jax.random.normal(k1, (D_IN, D_OUT))}
  if bias:
    dense["bias"] = jax.random.normal(k2, (D_OUT,))
  return {"dense": dense, "norm": {"scale": jnp.ones((D_IN,))}}


def _stats(step, scale=0.4):
  ka, kg = jax.random.split(jax.random.key(100 + step))
  return {"dense.kernel": (scale * jax.random.normal(ka, (D_IN,)),
                           scale * jax.random.normal(kg, (D_OUT,)))}


def _run(tx, params, grads_per_step, stats_per_step):
  state = tx.init(params)
  outs = []
  for grads, stats in zip(grads_per_step, stats_per_step):
    out, state = tx.update(grads, state, params, layer_stats=stats)
    outs.append(out)
  return outs, state


@pytest.mark.parametrize("bias", [False, True])
def test_sherman_morrison_factors_match_explicit_inverse(bias):
  params = _params(bias)
  tx = mkor(optax.identity(), inv_freq=1, stabilizer_threshold=1e6)
  steps = 5
  _, state = _run(tx, params, [params] * steps, [_stats(t) for t in range(steps)])

  a_inv, g_inv = np.eye(D_IN + bias), np.eye(D_OUT)  # step 0 resets both factors to I
  for t in range(1, steps):
    a, g = (np.asarray(x, np.float64) for x in _stats(t)["dense.kernel"])
    a_inv = _oracle_step(a_inv, np.append(a, 1.0) if bias else a)
    g_inv = _oracle_step(g_inv, g)
  layer = state.layers["dense.kernel"]
  np.testing.assert_allclose(layer.a_inv, a_inv, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(layer.g_inv, g_inv, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(layer.a_inv, layer.a_inv.T)
  assert not bool(layer.reset_a) and not bool(layer.reset_g)


def test_factor_updates_every_inv_freq_steps_and_during_warmup():
  params = _params()
  a_inv = lambda **kw: _run(mkor(optax.identity(), **kw), params, [params] * 7,
                            [_stats(t) for t in range(7)])[1].layers["dense.kernel"].a_inv
  # inv_freq=3: I at step 0, Sherman–Morrison at steps 3 and 6 only.
  expected = np.eye(D_IN)
  for t in (3, 6):
    expected = _oracle_step(expected, np.asarray(_stats(t)["dense.kernel"][0], np.float64))
  np.testing.assert_allclose(a_inv(inv_freq=3), expected, rtol=1e-5, atol=1e-6)
  # warmup_steps=2 adds step 1: steps 0 (reset), 1, 3, 6.
  expected = np.eye(D_IN)
  for t in (1, 3, 6):
    expected = _oracle_step(expected, np.asarray(_stats(t)["dense.kernel"][0], np.float64))
  np.testing.assert_allclose(a_inv(inv_freq=3, warmup_steps=2), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
def test_preconditioned_gradient_and_rescale(bias):
  params = _params(bias)
  grads = _params(bias, seed=7)
  stats = [_stats(0), _stats(1, scale=2.0)]
  raw_outs, state = _run(mkor(optax.identity(), inv_freq=1, rescale=False), params,
                         [grads, grads], stats)
  scaled_outs, _ = _run(mkor(optax.identity(), inv_freq=1), params, [grads, grads], stats)
  layer = state.layers["dense.kernel"]
  # Torch layout W = Kᵀ: ΔW = G⁻¹ ∇W A⁻¹ with ∇W = [∇K; ∇bᵀ]ᵀ.
  m = np.asarray(grads["dense"]["kernel"], np.float64)
  if bias:
    m = np.concatenate([m, np.asarray(grads["dense"]["bias"], np.float64)[None]])
  delta_w = np.asarray(layer.g_inv, np.float64) @ m.T @ np.asarray(layer.a_inv, np.float64)
  delta = delta_w.T
  out = raw_outs[1]["dense"]
  np.testing.assert_allclose(out["kernel"], delta[:D_IN], rtol=1e-5, atol=1e-6)
  assert not np.allclose(out["kernel"], m[:D_IN], atol=1e-3)  # the factors are not ~I
  ratio = ((np.linalg.norm(m[:D_IN]) + np.linalg.norm(m[D_IN:]))
           / (np.linalg.norm(delta[:D_IN]) + np.linalg.norm(delta[D_IN:])))
  scaled = scaled_outs[1]["dense"]
  np.testing.assert_allclose(scaled["kernel"], ratio * delta[:D_IN], rtol=1e-5, atol=1e-6)
  if bias:
    np.testing.assert_allclose(out["bias"], delta[D_IN], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scaled["bias"], ratio * delta[D_IN], rtol=1e-5, atol=1e-6)
  else:
    np.testing.assert_allclose(np.linalg.norm(scaled["kernel"]), np.linalg.norm(m), rtol=1e-5)
  # The first step's factors are I: rescaled or not, the step is the gradient.
  np.testing.assert_allclose(scaled_outs[0]["dense"]["kernel"], grads["dense"]["kernel"],
                             rtol=1e-6)


def test_stabiliser_resets_like_the_reference():
  """Starting from I the factors stay in [-1, 1]; threshold 0.5 makes every step overflow.

  Step 0 resets both; step 1: A⁻¹ overflows, so G⁻¹ is reset at once and A⁻¹ is flagged;
  step 2: A⁻¹ is reset, G⁻¹ steps and overflows, flagging both; step 3: both are reset.
  """
  params = _params()
  tx = mkor(optax.identity(), inv_freq=1, stabilizer_threshold=0.5)
  state = tx.init(params)
  history = []
  for t in range(4):
    _, state = tx.update(params, state, params, layer_stats=_stats(t))
    layer = state.layers["dense.kernel"]
    history.append((np.asarray(layer.a_inv), np.asarray(layer.g_inv),
                    bool(layer.reset_a), bool(layer.reset_g)))
  eye_a, eye_g = np.eye(D_IN), np.eye(D_OUT)
  a1 = _oracle_step(eye_a, np.asarray(_stats(1)["dense.kernel"][0], np.float64))
  g2 = _oracle_step(eye_g, np.asarray(_stats(2)["dense.kernel"][1], np.float64))
  expected = [(eye_a, eye_g, False, False), (a1, eye_g, True, False),
              (eye_a, g2, True, True), (eye_a, eye_g, False, False)]
  for (a, g, ra, rg), (ea, eg, era, erg) in zip(history, expected):
    np.testing.assert_allclose(a, ea, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g, eg, rtol=1e-5, atol=1e-6)
    assert (ra, rg) == (era, erg)


def test_non_finite_layers_fall_back_to_raw_gradient():
  params = {"a": {"kernel": jnp.ones((D_IN, D_OUT))}, "b": {"kernel": jnp.ones((D_IN, D_OUT))}}
  grads = {"a": {"kernel": jnp.zeros((D_IN, D_OUT))},  # rescale 0/0 = NaN
           "b": {"kernel": jnp.arange(15.0).reshape(D_IN, D_OUT)}}
  good = (0.3 * jnp.ones(D_IN), 0.2 * jnp.ones(D_OUT))
  tx = mkor(optax.identity(), inv_freq=1)
  (_, out), state = _run(tx, params, [grads, grads],
                         [{"a.kernel": good, "b.kernel": good}] * 2)
  np.testing.assert_array_equal(out["a"]["kernel"], 0.0)
  assert not np.allclose(out["b"]["kernel"], grads["b"]["kernel"], atol=1e-3)

  # NaN statistics: the factor turns NaN, the layer uses its raw gradient, the factor is flagged.
  nan_stats = (jnp.full((D_IN,), jnp.nan), 0.2 * jnp.ones(D_OUT))
  (_, out), state = _run(tx, params, [grads, grads],
                         [{"a.kernel": good, "b.kernel": good},
                          {"a.kernel": good, "b.kernel": nan_stats}])
  np.testing.assert_array_equal(out["b"]["kernel"], grads["b"]["kernel"])
  assert bool(state.layers["b.kernel"].reset_a)
  _, state = tx.update(grads, state, params, layer_stats={"a.kernel": good, "b.kernel": good})
  np.testing.assert_array_equal(state.layers["b.kernel"].a_inv, np.eye(D_IN))


def test_other_leaves_pass_through_to_the_inner_optimizer():
  params = {"embed": {"embedding": jnp.ones((7, D_IN))}, "dense": {"kernel": jnp.ones((D_IN, 4))},
            "conv": {"kernel": jnp.ones((2, 2, 3))}, "norm": {"scale": jnp.ones(D_IN)},
            "empty": None}
  grads = jax.tree.map(lambda p: 0.5 * p, params)
  grads["dense"]["kernel"] = jnp.arange(20.0).reshape(D_IN, 4)
  tx = mkor(optax.identity(), inv_freq=1)
  state = tx.init(params)
  assert set(state.layers) == {"dense.kernel"}
  stats = {"dense.kernel": (0.3 * jnp.ones(D_IN), 0.5 * jnp.ones(4)),
           "elsewhere.kernel": (jnp.ones(2), jnp.ones(2))}  # unregistered names are ignored
  for _ in range(2):
    out, state = tx.update(grads, state, params, layer_stats=stats)
  for path in (("embed", "embedding"), ("conv", "kernel"), ("norm", "scale")):
    np.testing.assert_array_equal(out[path[0]][path[1]], grads[path[0]][path[1]])
  assert out["empty"] is None
  assert not np.allclose(out["dense"]["kernel"], grads["dense"]["kernel"], atol=1e-3)


def test_without_layer_stats_it_is_the_inner_optimizer():
  params = _params(bias=True)
  inner = optax.sgd(0.1, momentum=0.9)
  tx = mkor(inner)
  state, inner_state = tx.init(params), inner.init(params)
  for t in range(3):
    grads = _params(bias=True, seed=t + 1)
    out, state = tx.update(grads, state, params)
    ref, inner_state = inner.update(grads, inner_state, params)
    jax.tree.map(np.testing.assert_array_equal, out, ref)
  assert int(state.count) == 3


def test_missing_or_misshaped_statistics_raise():
  params = _params()
  tx = mkor(optax.identity())
  state = tx.init(params)
  with pytest.raises(ValueError, match="no entry for the registered kernels.*dense.kernel"):
    tx.update(params, state, params, layer_stats={})
  with pytest.raises(ValueError, match=r"layer_stats\['dense.kernel'\] has shapes"):
    tx.update(params, state, params,
              layer_stats={"dense.kernel": (jnp.ones(D_OUT), jnp.ones(D_IN))})
  with pytest.raises(ValueError, match="2-D"):
    mkor(optax.identity(), precondition=lambda name, p: name == "norm.scale").init(params)


@pytest.mark.parametrize("factory,kwargs,message", [
    (mkor, {"inv_freq": 0}, "inv_freq=0"),
    (mkor, {"inv_freq": 2.5}, "inv_freq=2.5"),
    (mkor, {"clipping": 0.0}, "clipping=0.0"),
    (mkor, {"clipping": -1.0}, "clipping=-1.0"),
    (mkor, {"stabilizer_threshold": 0.0}, "stabilizer_threshold=0.0"),
    (mkor, {"damping": 1.5}, "damping=1.5"),
    (mkor, {"warmup_steps": -1}, "warmup_steps=-1"),
    (mkor_h, {"window": 0}, "window=0"),
    (mkor_h, {"min_improvement": math.nan}, "min_improvement=nan"),
    (mkor_h, {"clipping": -2.0}, "clipping=-2.0"),
])
def test_bad_hyperparameters(factory, kwargs, message):
  with pytest.raises(ValueError, match=message):
    factory(optax.sgd(0.1), **kwargs)


def test_mkor_h_switches_off_permanently_when_the_loss_stalls():
  params = _params()
  grads = _params(seed=3)
  tx = mkor_h(optax.identity(), window=2, min_improvement=0.1, inv_freq=1)
  ref = mkor(optax.identity(), inv_freq=1)
  state, ref_state = tx.init(params), ref.init(params)
  update, ref_update = jax.jit(tx.update), jax.jit(ref.update)
  losses = [8.0, 8.0, 6.0, 6.0, 5.9, 5.9, 1.0, 1.0, 1.0]  # window means 8, 6, 5.9, 1
  on = []
  for t, loss in enumerate(losses):
    out, state = update(grads, state, params, layer_stats=_stats(t), value=jnp.array(loss))
    ref_out, ref_state = ref_update(grads, ref_state, params, layer_stats=_stats(t))
    if t <= 5:  # the switch happens at the end of step 5 (improvement 1.7 % < 10 %)
      np.testing.assert_allclose(out["dense"]["kernel"], ref_out["dense"]["kernel"], rtol=1e-6)
    else:
      np.testing.assert_array_equal(out["dense"]["kernel"], grads["dense"]["kernel"])
    on.append(bool(state.second_order))
  assert on == [True] * 5 + [False] * 4  # the big drop at steps 6-7 does not turn it back on
  with pytest.raises(ValueError, match="value=loss"):
    tx.update(grads, state, params, layer_stats=_stats(0))


def test_mkor_h_nan_loss_switches_off_and_jits():
  params = _params()
  tx = mkor_h(optax.sgd(0.1), window=1)
  update = jax.jit(tx.update)
  state = tx.init(params)
  for loss in [3.0, jnp.nan]:
    _, state = update(params, state, params, layer_stats=_stats(0), value=jnp.array(loss))
  assert not bool(state.second_order)


def test_composes_with_apply_if_finite_and_multisteps():
  params = _params()
  tx = optax.apply_if_finite(mkor(optax.sgd(0.1), inv_freq=1), max_consecutive_errors=3)
  state = tx.init(params)
  _, state = tx.update(params, state, params, layer_stats=_stats(0))
  before = state.inner_state.layers["dense.kernel"]
  bad = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
  out, state = tx.update(bad, state, params, layer_stats=_stats(1))
  np.testing.assert_array_equal(out["dense"]["kernel"], 0.0)
  np.testing.assert_array_equal(state.inner_state.layers["dense.kernel"].a_inv, before.a_inv)

  multi = optax.MultiSteps(mkor(optax.sgd(0.1), inv_freq=1), every_k_schedule=2)
  state = multi.init(params)
  for t in range(4):
    out, state = jax.jit(multi.update)(params, state, params, layer_stats=_stats(t))
  assert int(state.inner_opt_state.count) == 2


def _tiny_transformer(dtype=jnp.float32):
  cfg = TransformerConfig(vocab_size=13, context_len=9, num_layers=1, d_model=16, num_heads=2,
                          mlp_dim=24, tie_embeddings=False)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, jax.tree.map(lambda p: p.astype(dtype), params), rest


def _loss(model, tokens):
  logits = model(tokens)[:, :-1]
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


@pytest.mark.slow
def test_end_to_end_transformer_under_jit_without_recompiling():
  graphdef, params, rest = _tiny_transformer()
  tx = mkor(optax.sgd(0.05, momentum=0.9), inv_freq=2)
  opt_state = tx.init(params)
  assert len(opt_state.layers) == 7  # q, k, v, o, up, down, unembed
  tokens = jax.random.randint(jax.random.key(3), (4, 9), 0, 13)
  traces = []

  @jax.jit
  def step(params, opt_state, tokens):
    traces.append(1)
    loss, grads, stats = value_grad_and_layer_stats(_loss, nnx.merge(graphdef, params, rest),
                                                    tokens)
    updates, opt_state = tx.update(grads, opt_state, params, layer_stats=stats)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(8):
    params, opt_state, loss = step(params, opt_state, tokens)
    losses.append(float(loss))
  assert len(traces) == 1
  assert losses[-1] < 0.8 * losses[0], losses
  assert all(np.isfinite(losses))
  layer = opt_state.layers["blocks.0.mlp.up.kernel"]
  assert not np.allclose(layer.a_inv, np.eye(16), atol=1e-4)


@pytest.mark.slow
def test_bf16_params_keep_dtype():
  graphdef, params, rest = _tiny_transformer(jnp.bfloat16)
  tx = mkor(optax.adam(1e-3), inv_freq=1)
  state = tx.init(params)
  tokens = jax.random.randint(jax.random.key(3), (2, 9), 0, 13)

  @jax.jit
  def step(params, state):
    _, grads, stats = value_grad_and_layer_stats(_loss, nnx.merge(graphdef, params, rest), tokens)
    updates, state = tx.update(grads, state, params, layer_stats=stats)
    return optax.apply_updates(params, updates), state

  for _ in range(2):
    params, state = step(params, state)
  for leaf in jax.tree.leaves(params):
    assert leaf.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(leaf)))
  assert state.layers["unembed.kernel"].g_inv.dtype == jnp.float32
