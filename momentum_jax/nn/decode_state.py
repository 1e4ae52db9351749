"""The decoding state of a :class:`~momentum_jax.nn.Transformer` and where a step writes its rows.

A model decodes by its one forward path with a :class:`DecodeState` (``Transformer.forward``):
:func:`begin_step` writes the new rows' positions and segment ids, every layer reads the
:class:`DecodeStep` it gives and returns its own state with the new rows written.

Each layer decodes in one of three forms (:func:`decoding_form`; layers of a hybrid may differ):

- ``"variant"``: the variant's registered decoding step (``AttentionVariant.decoding``): a
  contiguous K/V cache of ``max_len`` rows (softmax, momentum, KV-shift, EMA of values), a ring
  buffer of ``window`` rows with a sliding window, or an O(1) recurrent state (linear,
  Lightning).
- ``"flux"``: softmax attention with the flux router: each sequence's decision, made from the
  prompt, picks a ``max_len`` K/V cache or a ``flux_window`` ring buffer
  (:class:`~momentum_jax.nn.flux_router.FluxCache`), and only that branch is computed.
- ``"recompute"``: every other causal variant, and the flux router over any other variant: the
  layer keeps its input
  rows (:class:`RecomputeCache`) and recomputes its attention over the ``max_len`` rows for each
  step (its attention is causal, so rows not yet written do not reach the new ones): exact,
  O(max_len) per token.

A non-causal model (and so every bidirectional-only variant, which a causal config refuses) has
no decoding form.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from momentum_jax.attention import AttentionDims, get_attention
from momentum_jax.attention.decoding import DecodeContext, cache_capacity, row_starts
from momentum_jax.core.checks import is_concrete
from momentum_jax.nn.config import TransformerConfig
from momentum_jax.nn.flux_router import init_flux_cache

DecodingForm = Literal["variant", "flux", "recompute"]


class RecomputeCache(NamedTuple):
  """The state of a layer decoded by recomputation.

  Attributes:
    x: ``[B, max_len, D]`` the layer's (normalised) input rows written so far.
  """

  x: jax.Array


class DecodeState(NamedTuple):
  """The decoding state of a model.

  Attributes:
    layers: one state per layer (the variant's cache, a ``FluxCache`` or a
      :class:`RecomputeCache`), a tuple; for
      a model with ``scan_layers``, one such state whose arrays are the layers' stacked on a
      leading layer axis (the layers share one decoding form), which the layer scan reads and
      writes in place of a tuple.
    length: int32 scalar, rows written per sequence (all sequences advance together).
    positions: ``[B, max_len]`` int32 position of each written row within its segment.
    segment_ids: ``[B, max_len]`` int32 segment id of each written row, or None (one segment).
  """

  layers: tuple[object, ...] | object
  length: jax.Array
  positions: jax.Array
  segment_ids: jax.Array | None


class DecodeStep(NamedTuple):
  """What every layer of a decoding step reads: where its T new rows go among all rows.

  Attributes:
    context: the rows written before the new ones and the segment id of every row.
    positions: ``[B, max_len]`` int32 position of every row, the new rows' included.
  """

  context: DecodeContext
  positions: jax.Array


def check_decodable(config: TransformerConfig) -> None:
  """Raises ``ValueError`` when ``config`` has no causal decoding form, naming the option."""
  if not config.causal:
    raise ValueError(f"decoding needs a causal model, got causal=False with "
                     f"attention={config.attention!r} (a bidirectional-only variant, such as "
                     f"agent attention, has no causal form)")


def decoding_form(config: TransformerConfig, layer: int = 0) -> DecodingForm:
  """``"variant"`` when layer ``layer`` decodes by its variant's step, ``"flux"`` by the flux
  router's branch (softmax attention), else ``"recompute"``."""
  check_decodable(config)
  name = config.layer(layer).attention
  if config.flux_router:
    return "flux" if name == "softmax" else "recompute"
  return "variant" if get_attention(name).decoding is not None else "recompute"


def empty_decode_state(config: TransformerConfig, batch: int, max_len: int, *,
                       segments: bool = False) -> DecodeState:
  """The empty decoding state of a model of ``config`` for ``batch`` sequences of up to
  ``max_len`` tokens (``momentum_jax.nn.init_cache`` for a model), with a segment id per row
  when ``segments``."""
  check_decodable(config)
  if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
    raise ValueError(f"batch must be an int >= 1, got batch={batch!r}")
  if not isinstance(max_len, int) or not 1 <= max_len <= config.context_len:
    raise ValueError(f"max_len must be an int in [1, context_len={config.context_len}], got "
                     f"max_len={max_len!r}")
  dtype = config.compute_dtype
  dims = AttentionDims(config.num_heads, config.num_kv_heads, config.head_dim, config.context_len)

  def make(layer: int) -> object:
    if decoding_form(config, layer) == "flux":
      return init_flux_cache(batch, max_len, config.flux_window, dims, dtype)
    if decoding_form(config, layer) == "variant":
      init = get_attention(config.layer(layer).attention).decoding.init
      return init(batch, cache_capacity(max_len, config.window), dims, dtype)
    return RecomputeCache(jnp.zeros((batch, max_len, config.d_model), dtype))

  rows = lambda: jnp.zeros((batch, max_len), jnp.int32)  # a buffer each: a step may donate them
  layers = tuple(make(layer) for layer in range(config.num_layers))
  if config.scan_layers:
    layers = jax.tree.map(lambda *per_layer: jnp.stack(per_layer), *layers)
  return DecodeState(layers=layers,
                     length=jnp.zeros((), jnp.int32), positions=rows(),
                     segment_ids=rows() if segments else None)


def begin_step(state: DecodeState, tokens_BxT: jax.Array, segment_ids_BxT: jax.Array | None
               ) -> tuple[DecodeState, DecodeStep, jax.Array]:
  """The state with the positions and segment ids of T new rows written, the step every layer
  reads, and the int32 ``[B, T]`` positions of the new rows: counting on from the row before,
  from 0 at a segment start. ``segment_ids_BxT`` None continues each sequence's last segment.

  Raises:
    ValueError: ``tokens`` is not ``[B, T]`` with the state's B, segment ids do not fit, or
      (with a concrete length) the tokens run past the state's ``max_len``.
  """
  batch, max_len = state.positions.shape
  if tokens_BxT.ndim != 2 or tokens_BxT.shape[0] != batch:
    raise ValueError(f"tokens must be [batch={batch}, T] like the cache, got "
                     f"tokens.shape={tuple(tokens_BxT.shape)}")
  t = tokens_BxT.shape[1]
  if is_concrete(state.length) and int(state.length) + t > max_len:
    raise ValueError(f"decoding T={t} tokens after length={int(state.length)} passes the cache "
                     f"end max_len={max_len}")
  context = DecodeContext(state.length, _segment_ids(state, segment_ids_BxT, tokens_BxT))
  starts_BxT = jnp.broadcast_to(row_starts(context, t), (batch, t))
  t_T = jnp.arange(t, dtype=jnp.int32)
  last_start_BxT = jax.lax.cummax(jnp.where(starts_BxT, t_T, -1), axis=1)
  after_B = jnp.take(state.positions, jnp.maximum(state.length - 1, 0), axis=1) + 1
  positions_BxT = jnp.where(last_start_BxT >= 0, t_T - last_start_BxT, after_B[:, None] + t_T)
  state = state._replace(positions=jax.lax.dynamic_update_slice_in_dim(
      state.positions, positions_BxT, state.length, axis=1), segment_ids=context.segment_ids)
  return state, DecodeStep(context, state.positions), positions_BxT


def _segment_ids(state: DecodeState, segment_ids_BxT: jax.Array | None,
                 tokens_BxT: jax.Array) -> jax.Array | None:
  """The segment ids of all rows with the new ones written (continuing the last segment when
  none are given)."""
  if state.segment_ids is None:
    if segment_ids_BxT is not None:
      raise ValueError("segment_ids need a cache made with init_cache(..., segments=True)")
    return None
  if segment_ids_BxT is None:
    last_B = jnp.take(state.segment_ids, jnp.maximum(state.length - 1, 0), axis=1)
    segment_ids_BxT = jnp.broadcast_to(last_B[:, None], tokens_BxT.shape)
  segment_ids_BxT = jnp.asarray(segment_ids_BxT)
  if segment_ids_BxT.shape != tokens_BxT.shape or not jnp.issubdtype(segment_ids_BxT.dtype,
                                                                     jnp.integer):
    raise ValueError(f"segment_ids must be integers shaped like tokens {tuple(tokens_BxT.shape)},"
                     f" got segment_ids {segment_ids_BxT.dtype}{tuple(segment_ids_BxT.shape)}")
  return jax.lax.dynamic_update_slice_in_dim(
      state.segment_ids, segment_ids_BxT.astype(jnp.int32), state.length, axis=1)
