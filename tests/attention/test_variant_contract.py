"""The registry entry is the contract a model reads: what it declares must be true of the variant,
and a new variant that needs a learned parameter or a hooked prepare step works in the model
without any edit to ``momentum_jax.nn``."""

import functools
import inspect
import pathlib
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_testing import rel_err
from flax import nnx

import momentum_jax.attention as attn
from momentum_jax.attention import registry
from momentum_jax.nn import Transformer, TransformerConfig


def normal(seed, *shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.fixture
def scratch_registry(monkeypatch):
  """Registrations made in the test are gone after it."""
  monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.mark.parametrize("name", [n for n in attn.available_attention()
                                  if attn.get_attention(n).prepare is not None])
@pytest.mark.parametrize("segments", [False, True])
def test_prepare_then_fn_equals_fn(name, segments):
  """fn(prepare(q, k, v)) = fn(q, k, v), outputs and the gradients of q, k, v and γ (GQA)."""
  variant = attn.get_attention(name)
  q, k, v = normal(0, 2, 11, 4, 6), normal(1, 2, 11, 2, 6), normal(2, 2, 11, 2, 6)
  ids = jnp.asarray(np.repeat([[0, 1, 2], [0, 0, 1]], [4, 4, 3], axis=1)) if segments else None
  params = {"gamma": jnp.asarray([0.4, 1.3]), "boundary": "zero"}

  def whole(q, k, v, gamma):
    return variant.fn(q, k, v, segment_ids=ids, **{**params, "gamma": gamma})

  def in_two_steps(q, k, v, gamma):
    prepared = variant.prepare(q, k, v, segment_ids=ids, **{**params, "gamma": gamma})
    return variant.fn(*prepared[:3], segment_ids=ids, **prepared.params)

  args = (q, k, v, params["gamma"])
  assert rel_err(in_two_steps(*args), whole(*args)) < 1e-6
  cotangent = normal(3, *q.shape)
  grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cotangent), argnums=(0, 1, 2, 3))(*args)
           for f in (in_two_steps, whole)]
  for got, want in zip(*grads):
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("name", [n for n in attn.available_attention()
                                  if attn.get_attention(n).masking != "any"])
def test_declared_masking_is_what_the_variant_accepts(name):
  """A causal-only variant raises on causal=False and a non-causal one on causal=True."""
  variant = attn.get_attention(name)
  refused = {"causal": False, "bidirectional": True}[variant.masking]
  dims = attn.AttentionDims(4, 2, 8, 12)
  kwargs = {p: init(dims, jax.random.key(0)) for p, init in variant.learned.items()}
  required = [p.name for p in inspect.signature(variant.reference).parameters.values()
              if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
  kwargs.update({p: 0.5 for p in required if p not in kwargs})  # e.g. ema_value's fixed η
  q, k, v = normal(0, 1, 12, 4, 8), normal(1, 1, 12, 2, 8), normal(2, 1, 12, 2, 8)
  with pytest.raises(ValueError, match="causal"):
    variant.reference(q, k, v, causal=refused, **kwargs)
  wrong = "True" if refused else "False"
  with pytest.raises(ValueError, match=f"attention='{name}'.*got causal={wrong}"):
    TransformerConfig(vocab_size=8, context_len=12, attention=name, causal=refused)


def test_register_rejects_a_contract_it_cannot_keep(scratch_registry):
  base = attn.get_attention("softmax")
  with pytest.raises(ValueError, match=r"layouts \['w'\] of 'bad' are not learned parameters"):
    attn.register_attention("bad", base._replace(
        params=("w",), layouts={"w": attn.LearnedLayout(positive=True)}))
  with pytest.raises(ValueError, match="masking of 'bad' must be one of"):
    attn.register_attention("bad", base._replace(masking="sometimes"))
  with pytest.raises(ValueError, match="prepared_hooks of 'bad' must map fields of 'q', 'k', 'v'"):
    attn.register_attention("bad", base._replace(prepared_hooks={"q": "hook_q_scaled"}))
  with pytest.raises(ValueError, match="prepared_hooks of 'bad'"):
    attn.register_attention("bad", base._replace(
        prepare=lambda q, k, v, **p: attn.Prepared(q, k, v, p), prepared_hooks={"o": "hook_o"}))
  with pytest.raises(ValueError, match=r"required arguments \['w'\] of 'bad'.*not in its params"):
    attn.register_attention("bad", base._replace(
        fn=lambda q, k, v, *, w, **kwargs: attn.softmax_attention(q, k, v, **kwargs)))
  assert "bad" not in attn.available_attention()


def test_config_calls_check_params_with_the_fixed_values_and_dims(scratch_registry):
  """A config fixes every required parameter and hands the fixed values to ``check_params``."""
  seen = []

  def check_params(dims, fixed):
    seen.append((dims, dict(fixed)))
    if fixed["width"] > dims.head_dim:
      raise ValueError(f"width must be <= head_dim={dims.head_dim}, got width={fixed['width']}")

  def widened(fn, q, k, v, *, width, **kwargs):
    return fn(q, k, v, **kwargs)

  attn.register_attention("widened", attn.AttentionVariant(
      functools.partial(widened, attn.softmax_attention),
      functools.partial(widened, attn.softmax_attention_reference),
      params=("width",), check_params=check_params))
  assert attn.get_attention("widened").required_params == ("width",)
  with pytest.raises(ValueError, match=r"attention='widened' needs attention_params \['width'\]"):
    TransformerConfig(vocab_size=8, context_len=8, attention="widened", d_model=16, num_heads=2)
  with pytest.raises(ValueError, match="got width=9"):
    TransformerConfig(vocab_size=8, context_len=8, attention="widened", d_model=16, num_heads=2,
                      attention_params={"width": 9})
  TransformerConfig(vocab_size=8, context_len=8, attention="widened", d_model=16, num_heads=2,
                    attention_params={"width": 8})
  assert seen[-1] == (attn.AttentionDims(2, 2, 8, 8), {"width": 8})


def _temperature_prepare(q, k, v, *, segment_ids=None, temperature):
  del segment_ids
  return attn.Prepared(q / temperature[:, None], k, v, {"temperature": jnp.ones_like(temperature)})


def _temperature(fn, q, k, v, *, temperature, **kwargs):
  """Softmax attention with a learned positive temperature per query head."""
  return fn(q / temperature[:, None], k, v, **kwargs)


def test_a_new_variant_needs_no_model_edit(scratch_registry):
  """A variant with a learned positive parameter and a hooked prepare step, registered from
  outside the library: the model stores log(init), passes exp, and exposes the prepared q."""
  init = lambda dims, key: jnp.full((dims.num_heads,), 2.0)
  attn.register_attention("temperature", attn.AttentionVariant(
      functools.partial(_temperature, attn.softmax_attention),
      functools.partial(_temperature, attn.softmax_attention_reference),
      params=("temperature",), learned={"temperature": init},
      layouts={"temperature": attn.LearnedLayout(positive=True)},
      prepare=_temperature_prepare, prepared_hooks={"q": "hook_q_scaled"}))
  config = TransformerConfig(vocab_size=16, context_len=8, attention="temperature", num_heads=2,
                             d_model=16)
  model = Transformer(config, rngs=nnx.Rngs(0))
  stored = model.blocks[0].attn.variant_params["temperature"][...]
  np.testing.assert_allclose(stored, np.log(2.0), rtol=1e-6)
  tokens = jnp.arange(8)[None] % 16
  wanted = lambda name: name.endswith(("hook_rot_q", "hook_q_scaled"))
  logits, cache = model.run_with_cache(tokens, names_filter=wanted)
  rot_q, scaled_q = cache["blocks.0.attn.hook_rot_q"], cache["blocks.0.attn.hook_q_scaled"]
  np.testing.assert_allclose(scaled_q, rot_q / 2.0, rtol=1e-6)
  np.testing.assert_allclose(logits, model(tokens), rtol=1e-5, atol=1e-6)


def test_the_documented_example_variant_is_one_working_module(scratch_registry):
  """The module of ``docs/adding_a_variant.md`` registers "tempered" by being imported; its fast
  form equals its reference, is softmax attention at τ = 1, and a model uses it by name."""
  page = pathlib.Path(__file__).resolve().parents[2] / "docs" / "adding_a_variant.md"
  source = re.search(r"```python\n(.*?)```", page.read_text(), re.DOTALL).group(1)
  module = types.ModuleType("tempered")
  exec(compile(source, str(page), "exec"), module.__dict__)
  variant = attn.get_attention("tempered")
  q, k, v = normal(0, 2, 11, 4, 6), normal(1, 2, 11, 2, 6), normal(2, 2, 11, 2, 6)
  np.testing.assert_allclose(variant.fn(q, k, v, temperature=0.5),
                             variant.reference(q, k, v, temperature=0.5), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(variant.fn(q, k, v), attn.softmax_attention(q, k, v), rtol=1e-6)
  config = TransformerConfig(vocab_size=16, context_len=8, attention="tempered",
                             attention_params={"temperature": 0.5}, num_heads=2, d_model=16)
  assert Transformer(config, rngs=nnx.Rngs(0))(jnp.arange(8)[None]).shape == (1, 8, 16)
