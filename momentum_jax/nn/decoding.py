"""Decoding a :class:`~momentum_jax.nn.Transformer`: prefill, then one token at a time.

``cache = init_cache(model, batch, max_len)`` preallocates the decoding state of every layer;
``logits, cache = decode(model, tokens_BxT, cache)`` runs T new tokens of each sequence at rows
``length .. length + T − 1``, updates the state and returns their logits, equal to those of the
full forward pass ``model(all tokens so far, segment_ids=...)`` at the same rows. Jit it once per
shape: ``nnx.jit(decode)`` compiles once for the prefill and once for the single-token step.

Each layer decodes in one of two forms (:func:`decoding_form`; layers of a hybrid may differ):

- ``"variant"``: the variant's registered decoding step (``AttentionVariant.decoding``): a
  contiguous K/V cache of ``max_len`` rows (softmax, momentum, KV-shift, EMA of values), a ring
  buffer of ``window`` rows with a sliding window, or an O(1) recurrent state (linear,
  Lightning). Output gates, mixture-of-heads gates and learnable sinks act on the new rows.
- ``"recompute"``: every other causal variant, and the flux router: the layer keeps its input
  rows and recomputes its attention over the ``max_len`` rows for each step (its attention is
  causal, so rows not yet written do not reach the new ones): exact, O(max_len) per token.

A non-causal model (and so every bidirectional-only variant, which a causal config refuses)
raises.

Prompts of different lengths decode together left-padded, each pad in a segment of its own:
with ``init_cache(..., segments=True)`` every token carries a segment id, attention, the
momentum shear and the recurrent states restart at a change of id, and positions count from 0 in
each segment, as in the full forward pass with ``segment_ids``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from momentum_jax.attention import AttentionDims, get_attention
from momentum_jax.attention.decoding import (
    DecodeContext, cache_capacity, row_starts)
from momentum_jax.core.checks import is_concrete
from momentum_jax.nn.config import TransformerConfig
from momentum_jax.nn.hooks import NO_CAPTURE
from momentum_jax.nn.transformer import Attention, Transformer

DecodingForm = Literal["variant", "recompute"]


class RecomputeCache(NamedTuple):
  """The state of a layer decoded by recomputation.

  Attributes:
    x: ``[B, max_len, D]`` the layer's (normalised) input rows written so far.
  """

  x: jax.Array


class DecodeState(NamedTuple):
  """The decoding state of a model.

  Attributes:
    layers: one state per layer (the variant's cache or a :class:`RecomputeCache`).
    length: int32 scalar, rows written per sequence (all sequences advance together).
    positions: ``[B, max_len]`` int32 position of each written row within its segment.
    segment_ids: ``[B, max_len]`` int32 segment id of each written row, or None (one segment).
  """

  layers: tuple[object, ...]
  length: jax.Array
  positions: jax.Array
  segment_ids: jax.Array | None


def check_decodable(config: TransformerConfig) -> None:
  """Raises ``ValueError`` when ``config`` has no causal decoding form, naming the option."""
  if not config.causal:
    raise ValueError(f"decoding needs a causal model, got causal=False with "
                     f"attention={config.attention!r} (a bidirectional-only variant, such as "
                     f"agent attention, has no causal form)")


def decoding_form(config: TransformerConfig, layer: int = 0) -> DecodingForm:
  """``"variant"`` when layer ``layer`` decodes by its variant's step, else ``"recompute"``."""
  check_decodable(config)
  variant = get_attention(config.layer(layer).attention)
  return "variant" if variant.decoding is not None and not config.flux_router else "recompute"


def init_cache(model: Transformer, batch: int, max_len: int, *,
               segments: bool = False) -> DecodeState:
  """The empty decoding state of ``model`` for ``batch`` sequences of up to ``max_len`` tokens.

  Args:
    model: a causal model (:func:`check_decodable`).
    batch: sequences decoded together, >= 1.
    max_len: rows per sequence, in [1, ``context_len``].
    segments: keep a segment id per row (for left-padded prompts and packed sequences).

  Raises:
    ValueError: a bad ``batch`` or ``max_len``, or a configuration with no causal form.
  """
  config = model.config
  check_decodable(config)
  if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
    raise ValueError(f"batch must be an int >= 1, got batch={batch!r}")
  if not isinstance(max_len, int) or not 1 <= max_len <= config.context_len:
    raise ValueError(f"max_len must be an int in [1, context_len={config.context_len}], got "
                     f"max_len={max_len!r}")
  dtype = config.compute_dtype
  dims = AttentionDims(config.num_heads, config.num_kv_heads, config.head_dim, config.context_len)

  def make(layer: int) -> object:
    if decoding_form(config, layer) == "variant":
      init = get_attention(config.layer(layer).attention).decoding.init
      return init(batch, cache_capacity(max_len, config.window), dims, dtype)
    return RecomputeCache(jnp.zeros((batch, max_len, config.d_model), dtype))

  rows = lambda: jnp.zeros((batch, max_len), jnp.int32)  # a buffer each: a step may donate them
  return DecodeState(layers=tuple(make(layer) for layer in range(config.num_layers)),
                     length=jnp.zeros((), jnp.int32), positions=rows(),
                     segment_ids=rows() if segments else None)


def _new_segment_ids(cache: DecodeState, segment_ids_BxT: jax.Array | None,
                     tokens_BxT: jax.Array) -> jax.Array | None:
  """The segment ids of all rows with the new ones written (continuing the last segment when
  none are given)."""
  if cache.segment_ids is None:
    if segment_ids_BxT is not None:
      raise ValueError("segment_ids need a cache made with init_cache(..., segments=True)")
    return None
  if segment_ids_BxT is None:
    last_B = jnp.take(cache.segment_ids, jnp.maximum(cache.length - 1, 0), axis=1)
    segment_ids_BxT = jnp.broadcast_to(last_B[:, None], tokens_BxT.shape)
  segment_ids_BxT = jnp.asarray(segment_ids_BxT)
  if segment_ids_BxT.shape != tokens_BxT.shape or not jnp.issubdtype(segment_ids_BxT.dtype,
                                                                     jnp.integer):
    raise ValueError(f"segment_ids must be integers shaped like tokens {tuple(tokens_BxT.shape)},"
                     f" got segment_ids {segment_ids_BxT.dtype}{tuple(segment_ids_BxT.shape)}")
  return jax.lax.dynamic_update_slice_in_dim(
      cache.segment_ids, segment_ids_BxT.astype(jnp.int32), cache.length, axis=1)


def _new_positions(cache: DecodeState, context: DecodeContext, t: int) -> jax.Array:
  """Int32 ``[B, T]`` positions of the new rows: counting on from the row before, from 0 at a
  segment start."""
  starts_BxT = jnp.broadcast_to(row_starts(context, t), (cache.positions.shape[0], t))
  t_T = jnp.arange(t, dtype=jnp.int32)
  last_start_BxT = jax.lax.cummax(jnp.where(starts_BxT, t_T, -1), axis=1)
  after_B = jnp.take(cache.positions, jnp.maximum(cache.length - 1, 0), axis=1) + 1
  return jnp.where(last_start_BxT >= 0, t_T - last_start_BxT, after_B[:, None] + t_T)


def _attend_variant(attn: Attention, h_BxTxD: jax.Array, positions_BxT: jax.Array,
                    state: object, context: DecodeContext) -> tuple[jax.Array, object]:
  """The layer's output on the new rows through its variant's decoding step."""
  config = attn.config
  b, t, _ = h_BxTxD.shape
  variant = get_attention(config.attention)
  q_BxTxNxH, k_BxTxKxH, v_BxTxKxH = attn.project(h_BxTxD, positions_BxT, NO_CAPTURE, "")
  kwargs = attn.variant_kwargs(variant, h_BxTxD, positions_BxT, None, NO_CAPTURE, "")
  del kwargs["causal"], kwargs["segment_ids"]
  z_BxTxNxH, state = variant.decoding.step(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, state, context,
                                           window=config.window, **kwargs)
  z_BxTxNxH = attn.gate_heads(h_BxTxD, z_BxTxNxH.astype(h_BxTxD.dtype), NO_CAPTURE, "", None)
  return attn.o_proj(z_BxTxNxH.reshape(b, t, config.num_heads * config.head_dim)), state


def _attend_recompute(attn: Attention, h_BxTxD: jax.Array, state: RecomputeCache,
                      cache: DecodeState, context: DecodeContext) -> tuple[jax.Array, object]:
  """The layer's output on the new rows by recomputing its attention over all ``max_len``
  rows (those not yet written are zeros and, the attention being causal, unseen)."""
  x_BxSxD = jax.lax.dynamic_update_slice_in_dim(state.x, h_BxTxD.astype(state.x.dtype),
                                                context.length, axis=1)
  out_BxSxD = attn(x_BxSxD, cache.positions, context.segment_ids, NO_CAPTURE, "")
  out_BxTxD = jax.lax.dynamic_slice_in_dim(out_BxSxD, context.length, h_BxTxD.shape[1], axis=1)
  return out_BxTxD, RecomputeCache(x_BxSxD)


def decode(model: Transformer, tokens_BxT: jax.Array, cache: DecodeState, *,
           segment_ids_BxT: jax.Array | None = None) -> tuple[jax.Array, DecodeState]:
  """Float32 logits ``[B, T, V]`` of T new tokens per sequence and the state with them written.

  Args:
    model: the model ``cache`` was made for.
    tokens_BxT: int token ids of the new rows.
    cache: the decoding state (:func:`init_cache`).
    segment_ids_BxT: segment ids of the new rows (a cache with ``segments=True`` only); None
      continues each sequence's last segment.

  Raises:
    ValueError: ``tokens`` is not ``[B, T]`` with the cache's B, segment ids do not fit, or
      (with a concrete length) the tokens run past the cache's ``max_len``.
  """
  config = model.config
  check_decodable(config)
  tokens_BxT = jnp.asarray(tokens_BxT)
  batch, max_len = cache.positions.shape
  if tokens_BxT.ndim != 2 or tokens_BxT.shape[0] != batch:
    raise ValueError(f"tokens must be [batch={batch}, T] like the cache, got "
                     f"tokens.shape={tuple(tokens_BxT.shape)}")
  b, t = tokens_BxT.shape
  if is_concrete(cache.length) and int(cache.length) + t > max_len:
    raise ValueError(f"decoding T={t} tokens after length={int(cache.length)} passes the cache "
                     f"end max_len={max_len}")
  context = DecodeContext(cache.length, _new_segment_ids(cache, segment_ids_BxT, tokens_BxT))
  positions_BxT = _new_positions(cache, context, t)
  cache = cache._replace(positions=jax.lax.dynamic_update_slice_in_dim(
      cache.positions, positions_BxT, cache.length, axis=1), segment_ids=context.segment_ids)
  x_BxTxD = model.embed(tokens_BxT)
  layers = []
  for layer, (block, state) in enumerate(zip(model.blocks, cache.layers, strict=True)):
    h_BxTxD = block.attn_norm(x_BxTxD)
    if decoding_form(config, layer) == "variant":
      out_BxTxD, state = _attend_variant(block.attn, h_BxTxD, positions_BxT, state, context)
    else:
      out_BxTxD, state = _attend_recompute(block.attn, h_BxTxD, state, cache, context)
    layers.append(state)
    x_BxTxD = x_BxTxD + out_BxTxD
    if block.mlp is not None:
      x_BxTxD = x_BxTxD + block.mlp(block.mlp_norm(x_BxTxD))
  x_BxTxD = model.final_norm(x_BxTxD)
  logits_BxTxV = model.embed.attend(x_BxTxD) if model.unembed is None else model.unembed(x_BxTxD)
  return logits_BxTxV.astype(jnp.float32), cache._replace(
      layers=tuple(layers), length=cache.length + jnp.asarray(t, jnp.int32))
