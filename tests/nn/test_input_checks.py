"""Input safety: bad configs raise when built; concrete bad token ids raise in an eager call; bad
token ids and a NaN or negative γ raise under ``jax.jit`` inside ``checked`` (checkify), with the
named message first; without ``checked`` the traced model emits no check."""

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import checkify

import momentum_jax.attention as attn
from momentum_jax.attention import registry
from momentum_jax.nn import Transformer, TransformerConfig, checked, decode, init_cache

VOCAB = 64


def _model(**overrides) -> Transformer:
  config = TransformerConfig(**{
      "vocab_size": VOCAB, "context_len": 8, "d_model": 32, "num_heads": 4, "mlp_dim": 16,
      "attention": "momentum", "attention_params": {"gamma": 0.5}, **overrides})
  return Transformer(config, rngs=nnx.Rngs(0))


TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (2, 8)), jnp.int32)


# Config-time checks.


def test_d_model_not_divisible_by_num_heads_raises():
  with pytest.raises(ValueError, match=re.escape("got d_model=32, num_heads=3")):
    TransformerConfig(vocab_size=8, context_len=8, num_heads=3, d_model=32)
  assert TransformerConfig(vocab_size=8, context_len=8, num_heads=3, d_model=32,
                           head_dim=10).head_dim == 10


@pytest.mark.parametrize("name,missing", [("momentum", "['gamma']"), ("ema_value", "['eta']")])
def test_missing_required_param_raises(name, missing):
  with pytest.raises(ValueError, match=re.escape(f"attention='{name}' needs attention_params "
                                                 f"{missing}")):
    TransformerConfig(vocab_size=8, context_len=8, attention=name)


def test_required_params_come_from_the_signature_less_the_learned():
  assert attn.get_attention("momentum").required_params == ("gamma",)
  assert attn.get_attention("ema_value").required_params == ("eta",)
  assert attn.get_attention("kv_shift").required_params == ()  # alpha, beta are learned
  assert attn.get_attention("softmax").required_params == ()
  for name in attn.available_attention():
    variant = attn.get_attention(name)
    signature = inspect.signature(variant.fn).parameters
    for param in variant.required_params:
      assert signature[param].default is inspect.Parameter.empty
      assert param in variant.params and param not in variant.learned


@pytest.mark.parametrize("params,error,message", [
    ({"gamma": "0.5"}, TypeError, "gamma must be a real number or an array of real numbers, "
                                  "got gamma='0.5'"),
    ({"gamma": True}, TypeError, "got gamma=True"),
    ({"gamma": -0.5}, ValueError, "gamma must be >= 0 and not NaN, got gamma=-0.5"),
    ({"gamma": float("nan")}, ValueError, "gamma must be >= 0 and not NaN, got gamma=nan"),
    ({"gamma": float("inf")}, ValueError, "gamma must be finite, got gamma=inf"),
    ({"gamma": (0.5, 0.5, 0.5)}, ValueError, "gamma must be a scalar or have shape [4] (one per "
                                             "kv head), got gamma.shape=(3,)"),
    ({"gamma": 0.5, "boundary": "reflect"}, ValueError, "got boundary='reflect'"),
])
def test_bad_fixed_momentum_params_raise_at_config_time(params, error, message):
  with pytest.raises(error, match=re.escape(message)):
    TransformerConfig(vocab_size=8, context_len=8, attention="momentum", attention_params=params)


def test_valid_fixed_momentum_params_build():
  for params in ({"gamma": 0.0}, {"gamma": 2}, {"gamma": (0.5, 0.0), "boundary": "replicate"}):
    TransformerConfig(vocab_size=8, context_len=8, num_kv_heads=2, attention="momentum",
                      attention_params=params)


def test_check_per_head_rejects_a_string_naming_the_argument():
  from momentum_jax.core.checks import check_per_head
  with pytest.raises(TypeError, match=re.escape("decay must be a real number")):
    check_per_head("decay", "abc", 4)


# Checks of concrete token ids, in an eager call.


@pytest.mark.parametrize("bad", [VOCAB, -1])
@pytest.mark.parametrize("as_array", [np.asarray, jnp.asarray])
def test_out_of_range_token_raises_in_an_eager_call(bad, as_array):
  model = _model(num_layers=1)
  tokens = as_array(TOKENS.at[1, 3].set(bad).at[1, 5].set(bad))
  message = f"tokens must be in [0, vocab_size={VOCAB}), got a token id of {bad} at tokens[1, 3]"
  for forward in (model, lambda t: model.run_with_cache(t)[0],
                  lambda t: model.logits_and_aux_loss(t)[0],
                  lambda t: decode(model, t, init_cache(model, 2, 8))[0]):
    with pytest.raises(ValueError, match=re.escape(message)):
      forward(tokens)


# Checks under jit, inside `checked`.


def test_checked_raises_the_named_message_first():
  model = _model(num_layers=1)
  tokens = TOKENS.at[1, 3].set(VOCAB)
  message = f"tokens must be in [0, vocab_size={VOCAB}), got a token id of {VOCAB} at tokens[1, 3]"
  with pytest.raises(ValueError) as raised:
    checked(jax.jit(lambda t: model(t)))(tokens)
  assert str(raised.value).splitlines()[0] == message


@pytest.mark.parametrize("bad,where", [(VOCAB, "[1, 3]"), (-1, "[1, 3]"), (10**6, "[1, 3]")])
def test_out_of_range_token_raises_under_jit(bad, where):
  model = _model()
  tokens = TOKENS.at[1, 3].set(bad).at[1, 5].set(bad)
  message = f"tokens must be in [0, vocab_size={VOCAB}), got a token id of {bad} at tokens{where}"
  with pytest.raises(checkify.JaxRuntimeError, match=re.escape(message)):
    checked(jax.jit(lambda t: model(t)))(tokens)
  with pytest.raises(jax.errors.JaxRuntimeError, match=re.escape(message)):
    jax.block_until_ready(jax.jit(checked(lambda t: model(t)))(tokens))


def test_token_check_covers_every_forward_method():
  model = _model()
  tokens = TOKENS.at[0, 0].set(VOCAB)
  for forward in (lambda t: model.run_with_cache(t)[0], lambda t: model.logits_and_aux_loss(t)[0],
                  lambda t: model.run_with_hooks(t)):
    with pytest.raises(checkify.JaxRuntimeError, match=re.escape("got a token id of 64")):
      checked(jax.jit(forward))(tokens)


@pytest.mark.parametrize("tie", [True, False])
def test_checked_logits_are_bit_identical(tie):
  model = _model(tie_embeddings=tie)
  forward = lambda t: model(t)
  plain = np.asarray(jax.jit(forward)(TOKENS))
  np.testing.assert_array_equal(np.asarray(jax.jit(checked(forward))(TOKENS)), plain)
  np.testing.assert_array_equal(np.asarray(checked(jax.jit(forward))(TOKENS)), plain)
  assert inspect.signature(checked(_model_forward)) == inspect.signature(_model_forward)


def _model_forward(model: Transformer, tokens_BxT: jax.Array) -> jax.Array:
  return model(tokens_BxT)


def test_plain_jit_emits_no_check():
  """Without `checked` the traced model has no checkify check: it compiles, and a bad token id
  gives the unchecked result (NaN logits) instead of raising."""
  model = _model()
  forward = jax.jit(lambda t: model(t))
  jaxpr = jax.make_jaxpr(lambda t: model(t))(TOKENS)
  assert "check[" not in str(jaxpr)
  forward.lower(TOKENS).compile()
  # The same jitted function, called with and without the checks, is traced for each.
  with pytest.raises(checkify.JaxRuntimeError):
    checked(forward)(TOKENS.at[0, 0].set(VOCAB))
  assert np.isnan(np.asarray(forward(TOKENS.at[0, 0].set(VOCAB)))[0, 0]).all()


Q = jnp.asarray(np.random.default_rng(1).standard_normal((2, 7, 4, 8)), jnp.float32)
KV = jnp.asarray(np.random.default_rng(2).standard_normal((2, 7, 2, 8)), jnp.float32)


@pytest.mark.parametrize("gamma,shown", [(jnp.float32(jnp.nan), "nan"),
                                         (jnp.float32(-0.5), "-0.5"),
                                         (jnp.asarray([0.5, jnp.nan]), "[0.5 nan]")])
@pytest.mark.parametrize("fn", [attn.momentum_attention, attn.momentum_attention_reference])
def test_traced_bad_gamma_raises_under_checked(fn, gamma, shown):
  message = f"gamma must be >= 0 and not NaN, got gamma={shown}"
  attend = lambda q, k, v, g: fn(q, k, v, gamma=g)
  with pytest.raises(checkify.JaxRuntimeError, match=re.escape(message)):
    checked(jax.jit(attend))(Q, KV, KV, gamma)
  with pytest.raises(jax.errors.JaxRuntimeError, match=re.escape(message)):
    jax.block_until_ready(jax.jit(checked(attend))(Q, KV, KV, gamma))
  # Without `checked` a traced γ is not checked (the output of a NaN γ is NaN).
  jax.jit(attend)(Q, KV, KV, gamma)


def test_valid_traced_gamma_passes_under_checked():
  attend = jax.jit(lambda q, k, v, g: attn.momentum_attention(q, k, v, gamma=g))
  gamma = jnp.asarray([0.5, 0.0])
  np.testing.assert_array_equal(np.asarray(checked(attend)(Q, KV, KV, gamma)),
                                np.asarray(attend(Q, KV, KV, gamma)))


@pytest.fixture
def learned_momentum(monkeypatch):
  """A momentum variant whose γ is learned, registered for the test only."""
  monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
  base = attn.get_attention("momentum")
  attn.register_attention("momentum_learned_gamma", base._replace(
      learned={"gamma": lambda dims, key: jnp.full((dims.num_kv_heads,), 0.5)}))


@pytest.mark.parametrize("value,shown", [(jnp.nan, "nan"), (-1.0, "-1.")])
def test_learned_gamma_is_checked_in_the_model_forward(learned_momentum, value, shown):
  """The model's state passed as an argument (nnx.split), so the learned γ is traced."""
  graphdef, state = nnx.split(_model(attention="momentum_learned_gamma", attention_params={}))
  forward = lambda state, t: nnx.merge(graphdef, state)(t)
  plain = np.asarray(jax.jit(forward)(state, TOKENS))
  np.testing.assert_array_equal(np.asarray(checked(jax.jit(forward))(state, TOKENS)), plain)
  gamma = state["blocks"][0]["attn"]["variant_params"]["gamma"]
  gamma.set_value(jnp.asarray([0.5, value, 0.5, 0.5]))
  message = r"gamma must be >= 0 and not NaN, got gamma=\[ *0\.5 +" + re.escape(shown)
  with pytest.raises(checkify.JaxRuntimeError, match=message):
    checked(jax.jit(forward))(state, TOKENS)
