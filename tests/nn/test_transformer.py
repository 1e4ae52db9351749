"""Tests of the NNX transformer: variants by name, capture, causality, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from momentum_jax.nn import Transformer, TransformerConfig, segment_positions

VARIANTS = [
    ("softmax", {}),
    ("momentum", {"gamma": 0.5}),
    ("kv_shift", {}),
    ("ema_value", {"eta": 0.5}),
]


def _config(**overrides) -> TransformerConfig:
  base = dict(vocab_size=23, context_len=17, num_layers=2, d_model=48, num_heads=4,
              num_kv_heads=2, head_dim=12, mlp_dim=32)
  base.update(overrides)
  return TransformerConfig(**base)


def _tokens(batch=2, seq=13, vocab=23, seed=0):
  return jax.random.randint(jax.random.key(seed), (batch, seq), 0, vocab)


@pytest.mark.slow
@pytest.mark.parametrize("attention,params", VARIANTS)
def test_logits_shape_dtype_and_causality(attention, params):
  model = Transformer(_config(attention=attention, attention_params=params), rngs=nnx.Rngs(0))
  tokens = _tokens()
  logits = model(tokens)
  assert logits.shape == (2, 13, 23) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  # Changing tokens after position t leaves every logit at positions <= t unchanged.
  t = 6
  changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 5) % 23)
  np.testing.assert_array_equal(np.asarray(model(changed)[:, :t + 1]),
                                np.asarray(logits[:, :t + 1]))
  assert not np.allclose(model(changed)[:, t + 1:], logits[:, t + 1:])


def test_causality_by_gradient():
  """d(logits at t)/d(embedding of the token at s) is exactly zero for s > t, non-zero for s <= t.

  Embeddings are untied, so the table's gradient flows only through the input positions.
  """
  model = Transformer(_config(attention="momentum", attention_params={"gamma": 1.0},
                              tie_embeddings=False), rngs=nnx.Rngs(1))
  tokens = _tokens(batch=1)
  t = 5
  grads = nnx.grad(lambda m: m(tokens)[0, t].sum())(model)
  grad_VxD = grads["embed"]["embedding"][...]
  # Token ids at positions after t that do not also occur at or before t.
  ids_before = set(np.asarray(tokens[0, :t + 1]).tolist())
  ids_after_only = set(np.asarray(tokens[0, t + 1:]).tolist()) - ids_before
  for token_id in ids_after_only:
    np.testing.assert_array_equal(np.asarray(grad_VxD[token_id]), 0.0)
  for token_id in ids_before:
    assert np.abs(np.asarray(grad_VxD[token_id])).sum() > 0


@pytest.mark.parametrize("attention,params", VARIANTS)
def test_run_with_cache_captures_hook_names(attention, params):
  model = Transformer(_config(attention=attention, attention_params=params), rngs=nnx.Rngs(0))
  tokens = _tokens()
  logits, cache = model.run_with_cache(tokens)
  np.testing.assert_allclose(logits, model(tokens), rtol=1e-5, atol=1e-5)
  for layer in range(2):
    p = f"blocks.{layer}."
    assert cache[p + "attn.hook_q"].shape == (2, 13, 4, 12)
    assert cache[p + "attn.hook_k"].shape == (2, 13, 2, 12)
    assert cache[p + "attn.hook_rot_q"].shape == (2, 13, 4, 12)
    assert cache[p + "attn.hook_z"].shape == (2, 13, 4, 12)
    pattern = cache[p + "attn.hook_pattern"]
    assert pattern.shape == (2, 4, 13, 13)
    np.testing.assert_allclose(pattern.sum(-1), 1.0, rtol=1e-5)
    assert float(jnp.abs(jnp.triu(pattern, k=1)).max()) == 0.0
    for name in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                 "hook_mlp_out"):
      assert cache[p + name].shape == (2, 13, 48)
  assert cache["hook_embed"].shape == (2, 13, 48)


def test_names_filter_forms():
  model = Transformer(_config(), rngs=nnx.Rngs(0))
  tokens = _tokens()
  _, one = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_pattern")
  assert list(one) == ["blocks.1.attn.hook_pattern"]
  _, some = model.run_with_cache(tokens, names_filter=["hook_embed", "blocks.0.hook_resid_post"])
  assert sorted(some) == ["blocks.0.hook_resid_post", "hook_embed"]
  _, by_fn = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_v"))
  assert sorted(by_fn) == ["blocks.0.attn.hook_v", "blocks.1.attn.hook_v"]


def test_no_capture_costs_nothing():
  """With nothing captured the traced program is the plain forward pass, op for op."""
  model = Transformer(_config(attention="momentum", attention_params={"gamma": 0.5}),
                      rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  tokens = _tokens()

  def plain(state):
    return nnx.merge(graphdef, state)(tokens)

  def capture_nothing(state):
    return nnx.merge(graphdef, state).run_with_cache(tokens, names_filter=[])[0]

  def capture_pattern(state):
    return nnx.merge(graphdef, state).run_with_cache(
        tokens, names_filter="blocks.0.attn.hook_pattern")[0]

  n_plain = len(jax.make_jaxpr(plain)(state).eqns)
  assert len(jax.make_jaxpr(capture_nothing)(state).eqns) == n_plain
  assert len(jax.make_jaxpr(capture_pattern)(state).eqns) != n_plain


def test_run_with_cache_under_jit():
  model = Transformer(_config(), rngs=nnx.Rngs(0))

  @nnx.jit
  def patterns(model, tokens):
    return model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))[1]

  cache = patterns(model, _tokens())
  assert sorted(cache) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]


def test_segments_restart_positions_and_block_attention():
  segment_ids = jnp.array([[0, 0, 0, 1, 1, 2, 2, 2, 2]])
  np.testing.assert_array_equal(segment_positions(segment_ids), [[0, 1, 2, 0, 1, 0, 1, 2, 3]])
  model = Transformer(_config(attention="momentum", attention_params={"gamma": 1.0}),
                      rngs=nnx.Rngs(0))
  tokens = _tokens(batch=1, seq=9)
  packed = model(tokens, segment_ids_BxT=segment_ids)
  # The last document alone gives the same logits as inside the packed sequence.
  alone = model(tokens[:, 5:])
  np.testing.assert_allclose(packed[:, 5:], alone, rtol=1e-5, atol=1e-5)


def test_learned_variant_parameters_and_sinks_are_params():
  model = Transformer(_config(attention="kv_shift", learnable_sinks=True, num_layers=1),
                      rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  attn = params["blocks"][0]["attn"]
  assert attn["variant_params"]["alpha"][...].shape == (2, 2)
  assert attn["sinks"][...].shape == (4,)

  def loss(model):
    return model(_tokens()).mean()

  grads = nnx.grad(loss)(model)
  g_attn = grads["blocks"][0]["attn"]
  assert float(jnp.abs(g_attn["variant_params"]["beta"][...]).sum()) > 0
  assert float(jnp.abs(g_attn["sinks"][...]).sum()) > 0


def test_tied_and_untied_embeddings():
  tied = Transformer(_config(), rngs=nnx.Rngs(0))
  untied = Transformer(_config(tie_embeddings=False), rngs=nnx.Rngs(0))
  count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert count(untied) - count(tied) == 48 * 23


def test_bfloat16_compute():
  model = Transformer(_config(dtype="bfloat16", attention="momentum",
                              attention_params={"gamma": 0.5}), rngs=nnx.Rngs(0))
  logits = model(_tokens())
  assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


def test_config_round_trip_and_hashable():
  cfg = _config(attention="momentum", attention_params={"gamma": 0.25})
  assert TransformerConfig.from_dict(cfg.to_dict()) == cfg
  assert cfg.to_dict()["attention_params"] == {"gamma": 0.25}
  hash(cfg)


@pytest.mark.parametrize("overrides,error,words", [
    ({"attention": "nope"}, ValueError, ["nope", "softmax"]),
    ({"attention": "momentum", "attention_params": {"gama": 1.0}}, ValueError, ["gama", "gamma"]),
    ({"num_heads": 4, "num_kv_heads": 3}, ValueError, ["num_kv_heads=3", "num_heads=4"]),
    ({"head_dim": 11}, ValueError, ["head_dim=11"]),
    ({"d_model": 0}, ValueError, ["d_model=0"]),
    ({"mlp_dim": -1}, ValueError, ["mlp_dim"]),
    ({"window": 0}, ValueError, ["window=0"]),
    ({"dtype": "int8"}, ValueError, ["dtype", "int8"]),
])
def test_bad_config(overrides, error, words):
  with pytest.raises(error) as info:
    _config(**overrides)
  for word in words:
    assert word in str(info.value)


def test_bad_inputs():
  model = Transformer(_config(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"seq_len=18 > context_len=17"):
    model(_tokens(seq=18))
  with pytest.raises(TypeError, match=r"tokens.dtype=float32"):
    model(jnp.zeros((2, 5), jnp.float32))
  with pytest.raises(ValueError, match=r"tokens.shape=\(5,\)"):
    model(jnp.zeros((5,), jnp.int32))
  with pytest.raises(ValueError, match=r"segment_ids.shape=\(2, 4\)"):
    model(_tokens(seq=5), segment_ids_BxT=jnp.zeros((2, 4), jnp.int32))


def test_invalid_gamma_from_config_is_rejected():
  with pytest.raises(ValueError, match="gamma"):
    Transformer(_config(attention="momentum", attention_params={"gamma": -1.0}),
                rngs=nnx.Rngs(0))(_tokens())
