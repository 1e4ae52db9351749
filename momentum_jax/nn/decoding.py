"""KV-cache decoding of a :class:`~momentum_jax.nn.Transformer`: prefill, then one token at a time.

``cache = init_cache(model, batch, max_len)`` preallocates one contiguous cache per layer
(``momentum_jax.attention.decoding``); ``logits, cache = decode(model, tokens_BxT, cache)`` runs
T new tokens of each sequence at positions ``length .. length + T − 1``, appends their keys and
values and returns their logits, equal to those of ``model(all tokens so far)`` at the same
positions. Jit it once per shape: ``jax.jit(decode)`` compiles once for the prefill and once for
the single-token step.

Implemented for the softmax-family layers whose decoding is a K/V cache: ``attention`` in
:data:`DECODABLE_ATTENTION` without output gates, mixture-of-heads, the flux router, learnable
sinks or a window; other configurations raise ``ValueError`` naming the option. All sequences
of a batch advance together (no left padding yet).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from momentum_jax.attention import get_attention
from momentum_jax.attention.decoding import (
    KVCache, MomentumCache, init_kv_cache, init_momentum_cache, momentum_decode, softmax_decode)
from momentum_jax.nn.config import TransformerConfig
from momentum_jax.nn.hooks import NO_CAPTURE
from momentum_jax.nn.transformer import Transformer

DECODABLE_ATTENTION = ("softmax", "momentum")
LayerCache = KVCache | MomentumCache


def check_decodable(config: TransformerConfig) -> None:
  """Raises ``ValueError`` naming the first option of ``config`` that decoding lacks."""
  if config.attention not in DECODABLE_ATTENTION:
    raise ValueError(f"decoding is implemented for attention in {DECODABLE_ATTENTION}, got "
                     f"attention={config.attention!r}")
  unsupported = {
      "causal": not config.causal, "gate": config.gate != "none", "moh": config.moh,
      "flux_router": config.flux_router, "learnable_sinks": config.learnable_sinks,
      "window": config.window is not None,
  }
  for name, present in unsupported.items():
    if present:
      raise ValueError(f"decoding does not support {name}={getattr(config, name)!r} yet")


def init_cache(model: Transformer, batch: int, max_len: int) -> tuple[LayerCache, ...]:
  """Empty caches of ``max_len`` rows per sequence, one per layer, in the compute dtype.

  Raises:
    ValueError: ``max_len`` exceeds the model's ``context_len`` or is < 1, or the model's
      configuration has no decoding form yet (:func:`check_decodable`).
  """
  config = model.config
  check_decodable(config)
  if not isinstance(max_len, int) or not 1 <= max_len <= config.context_len:
    raise ValueError(f"max_len must be an int in [1, context_len={config.context_len}], got "
                     f"max_len={max_len!r}")
  dtype = config.compute_dtype
  if config.attention == "momentum":
    make = lambda: init_momentum_cache(batch, max_len, config.num_heads, config.num_kv_heads,
                                       config.head_dim, dtype)
  else:
    make = lambda: init_kv_cache(batch, max_len, config.num_kv_heads, config.head_dim, dtype)
  return tuple(make() for _ in range(config.num_layers))


def _length(cache: LayerCache) -> jax.Array:
  return cache.kv.length if isinstance(cache, MomentumCache) else cache.length


def decode(model: Transformer, tokens_BxT: jax.Array, cache: tuple[LayerCache, ...]
           ) -> tuple[jax.Array, tuple[LayerCache, ...]]:
  """Float32 logits ``[B, T, V]`` of T new tokens per sequence and the caches with them written.

  Raises:
    ValueError: ``tokens`` is not ``[B, T]`` with the caches' B, or (with concrete lengths) the
      tokens run past the caches' ``max_len``.
  """
  config = model.config
  check_decodable(config)
  tokens_BxT = jnp.asarray(tokens_BxT)
  batch = _length(cache[0]).shape[0]
  if tokens_BxT.ndim != 2 or tokens_BxT.shape[0] != batch:
    raise ValueError(f"tokens must be [batch={batch}, T] like the cache, got "
                     f"tokens.shape={tuple(tokens_BxT.shape)}")
  b, t = tokens_BxT.shape
  positions_BxT = _length(cache[0])[:, None] + jnp.arange(t)[None, :]
  variant = get_attention(config.attention)
  x_BxTxD = model.embed(tokens_BxT)
  new_cache = []
  for block, layer_cache in zip(model.blocks, cache, strict=True):
    attn = block.attn
    h_BxTxD = block.attn_norm(x_BxTxD)
    q_BxTxNxH, k_BxTxKxH, v_BxTxKxH = attn.project(h_BxTxD, positions_BxT, NO_CAPTURE, "")
    kwargs = attn._variant_kwargs(variant, h_BxTxD, positions_BxT, None, NO_CAPTURE, "")
    if config.attention == "momentum":
      z_BxTxNxH, layer_cache = momentum_decode(
          q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, layer_cache, gamma=kwargs["gamma"],
          boundary=kwargs.get("boundary", "zero"), scale=kwargs.get("scale"))
    else:
      z_BxTxNxH, layer_cache = softmax_decode(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, layer_cache,
                                              scale=kwargs.get("scale"))
    new_cache.append(layer_cache)
    z_BxTxNxH = z_BxTxNxH.astype(x_BxTxD.dtype)
    x_BxTxD = x_BxTxD + attn.o_proj(z_BxTxNxH.reshape(b, t, config.num_heads * config.head_dim))
    if block.mlp is not None:
      x_BxTxD = x_BxTxD + block.mlp(block.mlp_norm(x_BxTxD))
  x_BxTxD = model.final_norm(x_BxTxD)
  logits_BxTxV = model.embed.attend(x_BxTxD) if model.unembed is None else model.unembed(x_BxTxD)
  return logits_BxTxV.astype(jnp.float32), tuple(new_cache)
