"""Transformer KV-cache decoding: prefill + single tokens give the logits of the full forward
pass at every position (softmax and momentum, GQA, with and without the MLP); jit compiles once
per shape; unsupported configurations and bad inputs raise naming the option."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from momentum_jax.nn import Transformer, TransformerConfig
from momentum_jax.nn.decoding import decode, init_cache

BASE = TransformerConfig(vocab_size=37, context_len=24, num_layers=2, d_model=32, num_heads=4,
                         num_kv_heads=2, mlp_dim=64)
CONFIGS = {
    "softmax": BASE,
    "momentum": dataclasses.replace(BASE, attention="momentum", attention_params={"gamma": 0.5}),
    "momentum_replicate_no_mlp": dataclasses.replace(
        BASE, attention="momentum", attention_params={"gamma": 1.0, "boundary": "replicate"},
        mlp_dim=0),
    "softmax_untied": dataclasses.replace(BASE, tie_embeddings=False),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("prefill", [1, 6, 11])
def test_prefill_then_single_tokens_equal_the_full_forward_pass(name, prefill):
  model = Transformer(CONFIGS[name], rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (3, 11), 0, BASE.vocab_size)
  full = model(tokens)
  step = nnx.jit(decode)
  logits, cache = step(model, tokens[:, :prefill], init_cache(model, 3, 16))
  pieces = [logits]
  for t in range(prefill, tokens.shape[1]):
    logits, cache = step(model, tokens[:, t:t + 1], cache)
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, match", [
    ({"attention": "sigmoid"}, r"attention in \('softmax', 'momentum'\), got attention='sigmoid'"),
    ({"gate": "elementwise"}, "does not support gate='elementwise'"),
    ({"window": 4}, "does not support window=4"),
])
def test_configurations_without_a_decoding_form_are_named(change, match):
  model = Transformer(dataclasses.replace(BASE, **change), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=match):
    init_cache(model, 2, 8)


def test_bad_cache_sizes_and_batches_are_refused():
  model = Transformer(BASE, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"max_len must be an int in \[1, context_len=24\]"):
    init_cache(model, 2, 25)
  cache = init_cache(model, 2, 8)
  with pytest.raises(ValueError, match=r"tokens must be \[batch=2, T\] like the cache"):
    decode(model, jnp.zeros((3, 1), jnp.int32), cache)
  _, cache = decode(model, jnp.zeros((2, 6), jnp.int32), cache)
  with pytest.raises(ValueError, match="passes the cache end max_len=8"):
    decode(model, jnp.zeros((2, 3), jnp.int32), cache)
