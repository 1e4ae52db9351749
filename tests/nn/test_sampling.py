"""generate: greedy equals the argmax of repeated full forward passes; left-padded prompts of
different lengths continue as each would alone; generation decodes in evaluation mode and leaves
the model's state and mode bit-identical; sampling honours top_k, top_p and the rng; eos fills
the rest; bad arguments raise naming them."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from momentum_jax.nn import Transformer, TransformerConfig
from momentum_jax.nn.sampling import generate, sample_next

CONFIG = TransformerConfig(vocab_size=23, context_len=20, num_layers=2, d_model=32, num_heads=4,
                           mlp_dim=64, attention="momentum", attention_params={"gamma": 0.5})


@pytest.fixture(scope="module")
def model():
  return Transformer(CONFIG, rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_greedy_generation_equals_argmax_of_full_forward_passes(model):
  prompt = jax.random.randint(jax.random.key(3), (2, 5), 0, CONFIG.vocab_size)
  out = generate(model, prompt, 9)
  expected = prompt
  for _ in range(9):
    next_token = jnp.argmax(model(expected)[:, -1], axis=-1).astype(jnp.int32)
    expected = jnp.concatenate([expected, next_token[:, None]], axis=1)
  np.testing.assert_array_equal(out, expected)


@pytest.mark.slow
@pytest.mark.parametrize("attention, params", [
    ("momentum", {"gamma": 0.5}), ("linear", {}), ("flash_bias", {})])
def test_left_padded_prompts_continue_as_each_would_alone(attention, params):
  config = dataclasses.replace(CONFIG, attention=attention, attention_params=params)
  model = Transformer(config, rngs=nnx.Rngs(1))
  prompts = [[3, 1, 4, 1, 5, 9], [2, 6], [5, 3, 5, 8]]
  padded = jnp.asarray([[0] * (6 - len(p)) + p for p in prompts])
  out = generate(model, padded, 7, prompt_lengths=[len(p) for p in prompts])
  for row, prompt in enumerate(prompts):
    alone = generate(model, jnp.asarray([prompt]), 7)
    np.testing.assert_array_equal(out[row, -7:], alone[0, -7:])


@pytest.mark.slow
def test_sampling_is_reproducible_and_top_k_1_is_greedy(model):
  prompt = jnp.zeros((3, 2), jnp.int32)
  first = generate(model, prompt, 6, rng=jax.random.key(0), temperature=1.0)
  again = generate(model, prompt, 6, rng=jax.random.key(0), temperature=1.0)
  np.testing.assert_array_equal(first, again)
  top1 = generate(model, prompt, 6, rng=jax.random.key(5), temperature=2.0, top_k=1)
  np.testing.assert_array_equal(top1, generate(model, prompt, 6))


def _bits(model):
  """The model's graph (mode flags included) and a copy of every state leaf (keys as data)."""
  graphdef, state = nnx.split(model)
  as_data = lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
  return graphdef, [np.array(as_data(x)) for x in jax.tree.leaves(state)]


@pytest.mark.slow
def test_generation_decodes_in_evaluation_mode_and_leaves_the_model_as_it_was():
  # Training mode: affine attention's α_ma updates and the flux router draws noise on every call.
  config = dataclasses.replace(CONFIG, attention="affine", attention_params={}, flux_router=True,
                               flux_window=3)
  model = Transformer(config, rngs=nnx.Rngs(2))
  graphdef, before = _bits(model)
  prompt = jax.random.randint(jax.random.key(4), (2, 5), 0, CONFIG.vocab_size)
  greedy = generate(model, prompt, 6)
  generate(model, prompt, 6, rng=jax.random.key(1), temperature=1.0)
  after_graphdef, after = _bits(model)
  assert after_graphdef == graphdef and not model.blocks[0].attn.affine.use_running_average
  for a, b in zip(before, after, strict=True):
    np.testing.assert_array_equal(a, b)
  evaluated = nnx.merge(*nnx.split(model))
  evaluated.eval()
  expected = prompt
  for _ in range(6):
    next_token = jnp.argmax(evaluated(expected)[:, -1], axis=-1).astype(jnp.int32)
    expected = jnp.concatenate([expected, next_token[:, None]], axis=1)
  np.testing.assert_array_equal(greedy, expected)


def test_top_k_and_top_p_keep_only_the_allowed_tokens():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 2000))
  keys = jax.random.key(0)
  top2 = sample_next(logits, keys, temperature=1.0, top_k=2)
  assert set(np.unique(top2).tolist()) == {0, 1}
  nucleus = sample_next(logits, keys, temperature=1.0, top_p=0.7)  # 0.5 + 0.3 reach 0.7
  assert set(np.unique(nucleus).tolist()) == {0, 1}
  assert abs(float(jnp.mean(nucleus == 0)) - 0.5 / 0.8) < 0.05


def test_eos_fills_the_rest_of_a_finished_sequence(model):
  prompt = jnp.zeros((2, 3), jnp.int32)
  greedy = generate(model, prompt, 8)
  eos = int(greedy[0, 3])  # the first generated token of sequence 0
  out = generate(model, prompt, 8, eos_id=eos)
  assert out.shape == (2, 11)
  assert (out[0, 3:] == eos).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": -0.5}, "temperature must be >= 0"),
    ({"top_p": 0.0, "temperature": 1.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"top_k": 0}, "top_k must be None or an int >= 1"),
    ({"temperature": 1.0}, "rng must be a PRNG key"),
    ({"max_new_tokens": 18}, r"plus max_new_tokens=18 exceeds the model's context_len=20"),
    ({"prompt_lengths": [5]}, r"prompt_lengths must be \[batch=1\] ints in \[1, P=4\]"),
    ({"prompt_lengths": [0]}, r"prompt_lengths must be \[batch=1\] ints in \[1, P=4\]"),
    ({"prompt_lengths": [1, 2]}, r"prompt_lengths must be \[batch=1\] ints"),
])
def test_bad_arguments_are_named(model, kwargs, match):
  kwargs = {"max_new_tokens": 3, **kwargs}
  with pytest.raises(ValueError, match=match):
    generate(model, jnp.zeros((1, 4), jnp.int32), **kwargs)
