"""generate: greedy equals the argmax of repeated full forward passes; left-padded prompts of
different lengths continue as each would alone; generation decodes in evaluation mode and leaves
the model's state and mode bit-identical; sampling honours top_k, top_p and the rng; eos fills
the rest; bad arguments raise naming them: prompt token ids out of range or not integers,
``eos_id`` outside the vocabulary, an ``rng`` that is not a key, a ``max_new_tokens`` that is not
an int (NumPy ints are ints)."""

import dataclasses
import re

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
  # The full pass over the 14 positions, compiled once: causal, so the logits at position t see
  # only tokens <= t and the zeros after the text so far change nothing there.
  graphdef, state = nnx.split(model)
  full_pass = jax.jit(lambda tokens: nnx.merge(graphdef, state)(tokens))
  expected = jnp.zeros((2, 14), jnp.int32).at[:, :5].set(prompt)
  for length in range(5, 14):
    next_token = jnp.argmax(full_pass(expected)[:, length - 1], axis=-1).astype(jnp.int32)
    expected = expected.at[:, length].set(next_token)
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


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": "0.7"}, r"temperature must be a real number, got temperature='0.7' \(str\)"),
    ({"top_p": "0.9"}, r"top_p must be a real number, got top_p='0.9' \(str\)"),
    ({"temperature": None}, r"temperature must be a real number, got temperature=None"),
])
def test_sampling_numbers_of_the_wrong_type_are_named(model, kwargs, match):
  with pytest.raises(TypeError, match=match):
    generate(model, jnp.zeros((1, 4), jnp.int32), 3, **kwargs)


TINY = TransformerConfig(vocab_size=16, context_len=8, d_model=16, num_heads=2, mlp_dim=0)


@pytest.fixture(scope="module")
def tiny():
  return Transformer(TINY, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("bad", [16, -1, 2**40])
def test_out_of_range_prompt_token_is_named_with_its_position(tiny, bad):
  prompt = np.zeros((2, 4), np.int64)
  prompt[1, 2:] = bad
  message = f"prompt_tokens must be in [0, vocab_size=16), got a token id of {bad} at " \
            f"prompt_tokens[1, 2]"
  with pytest.raises(ValueError, match=re.escape(message)):
    generate(tiny, prompt, 2)


def test_out_of_range_pad_of_a_left_padded_prompt_is_named(tiny):
  with pytest.raises(ValueError, match=re.escape("got a token id of -1 at prompt_tokens[0, 0]")):
    generate(tiny, [[-1, 3, 4]], 2, prompt_lengths=[2])


@pytest.mark.parametrize("prompt", [jnp.asarray([[1.0, 7.9]]), [[1.0, float("nan")]],
                                    np.asarray([[True, False]])])
def test_non_integer_prompt_is_refused_not_cast(tiny, prompt):
  with pytest.raises(TypeError, match="prompt_tokens must be integer token ids, got "
                                      "prompt_tokens.dtype="):
    generate(tiny, prompt, 2)


def test_string_prompt_is_named(tiny):
  with pytest.raises(TypeError, match=re.escape("got the string prompt_tokens='hello' (encode "
                                                "it with the model's tokenizer first)")):
    generate(tiny, "hello", 2)


@pytest.mark.parametrize("eos_id, error, message", [
    (16, ValueError, "eos_id must be in [0, vocab_size=16), got eos_id=16"),
    (-1, ValueError, "eos_id must be in [0, vocab_size=16), got eos_id=-1"),
    (1.0, TypeError, "eos_id must be None or an int token id, got eos_id=1.0 (float)"),
    (True, TypeError, "eos_id must be None or an int token id, got eos_id=True (bool)"),
])
def test_eos_id_outside_the_vocabulary_is_named(tiny, eos_id, error, message):
  with pytest.raises(error, match=re.escape(message)):
    generate(tiny, [[1, 2]], 2, eos_id=eos_id)


@pytest.mark.parametrize("rng, shown", [
    (42, "rng=42"), ("0", "rng='0'"),
    (np.asarray([0, 42], np.int32), "rng.dtype=int32, rng.shape=(2,)"),
    (jax.random.split(jax.random.key(0)), "rng.dtype=key<fry>, rng.shape=(2,)"),
])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rng_that_is_not_a_key_is_named(tiny, rng, shown, temperature):
  message = "rng must be a JAX PRNG key, jax.random.key(seed) (or a legacy uint32[2] " \
            f"jax.random.PRNGKey(seed)), got {shown}"
  with pytest.raises(TypeError, match=re.escape(message)):
    generate(tiny, [[1, 2]], 2, rng=rng, temperature=temperature)
  if temperature:
    with pytest.raises(TypeError, match=re.escape(message)):
      sample_next(jnp.zeros((1, 16)), rng, temperature=temperature)


def test_typed_and_legacy_keys_both_sample():
  logits = jnp.zeros((3, 16))
  for key in (jax.random.key(0), jax.random.PRNGKey(0)):
    assert sample_next(logits, key, temperature=1.0).shape == (3,)


def test_numpy_int_max_new_tokens_is_an_int(tiny):
  out = generate(tiny, [[1, 2]], np.int64(3))
  assert out.shape == (1, 5) and out.dtype == jnp.int32
  np.testing.assert_array_equal(out, generate(tiny, [[1, 2]], 3))


@pytest.mark.parametrize("max_new_tokens, shown", [(True, "True (bool)"), (3.0, "3.0 (float)"),
                                                   ("3", "'3' (str)")])
def test_max_new_tokens_that_is_not_an_int_is_named(tiny, max_new_tokens, shown):
  with pytest.raises(TypeError, match=re.escape(f"max_new_tokens must be an int, got "
                                                f"max_new_tokens={shown}")):
    generate(tiny, [[1, 2]], max_new_tokens)
