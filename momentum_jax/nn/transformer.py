"""Flax NNX decoder-only transformer whose attention variant is chosen by name.

Pre-norm residual blocks (RMSNorm), RoPE on q and k, the registered attention variant from
``momentum_jax.attention`` (softmax, momentum, kv_shift, ema_value, ...), an optional GELU MLP
(``mlp_dim=0`` gives the attention-only models of the induction experiments) and tied or untied
embeddings. Activations are capturable under TransformerLens hook names (see ``hooks.py``).

Optional attention layers with their own parameters (all off by default, see
``TransformerConfig``): the sigmoid output gate of gated attention (``gated.py``), Mixture-of-Head
routing (``moh.py``), the α projection of affine-scaled attention (``affine.py``) and the flux
full-vs-sliding-window layer router (``flux_router.py``). Their losses (MoH load balance, flux
sparsity target) come out of :meth:`Transformer.logits_and_aux_loss`.

Depth (``TransformerConfig.scan_layers``, ``remat``): with ``scan_layers`` the blocks are one
block whose parameters are stacked on a leading layer axis (``stacking.py``; same draws as the
unscanned model, ``layer_layout.py`` converts between the layouts), run by one ``jax.lax.scan``
whose body is the block, so compile time does not grow with depth (MaxText's scanned layers);
``remat`` wraps each block, or the scan body, in ``jax.checkpoint`` with a policy of
``REMAT_POLICIES``. Hooks, decoding, auxiliary losses and per-layer γ go through the same block
code (see ``Transformer._run_blocks``).

Input checks: shapes and dtypes of the inputs are checked while tracing. Concrete token ids (an
eager call) are checked to be in ``[0, vocab_size)`` at once. Traced values are checked under
``jax.jit`` only inside :func:`momentum_jax.nn.checked` (``input_checks.py``, through
``jax.experimental.checkify``): token ids in ``[0, vocab_size)`` and a traced γ >= 0 and not NaN.
Without it the model traces with no value check and no cost.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from momentum_jax.attention import AttentionDims, AttentionVariant, LearnedLayout, get_attention
from momentum_jax.attention.registry import LearnedInit
from momentum_jax.core.heads import repeat_kv
from momentum_jax.core.rope import apply_rope
from momentum_jax.nn.config import TransformerConfig
from momentum_jax.nn.decode_state import (
    DecodeState, DecodeStep, RecomputeCache, begin_step, check_decodable)
from momentum_jax.nn.dense import ACTIVE_COLLECTOR, Dense
from momentum_jax.nn.flux_router import FluxCache, FluxRouter, flux_decode_step, sparsity_loss
from momentum_jax.nn.gated import AttentionGate
from momentum_jax.nn.hooks import NO_CAPTURE, HookFn, NamesFilter, Recorder
from momentum_jax.nn.input_checks import check_token_ids
from momentum_jax.nn.moh import (
    HeadSlots, MoHRouter, dropped_fraction, head_capacity, head_slots, kept_gates,
    routed_head_attention)
from momentum_jax.nn.partitioning import (
    EMBED, HEADS, MLP, PLACED_WEIGHT, VOCAB, embedding_init, kernel_init, layer_weights_placed,
    norm_scale_init, placed_layer_weights)
from momentum_jax.nn.stacking import (
    layer_view, rematerialised, stack_states, stacked_variables, unstacked_variables)
from momentum_jax.nn.token_params import TOKEN_PARAM_MODULES

AuxLosses = dict[str, jax.Array]
Activations = dict[str, jax.Array]
# Fixed attention parameters that replace the config's for one call (a scanned layer's γ).
FixedParams = Mapping[str, jax.Array | float]
# (z, scores, weights) of one attention call; scores and weights only when the pattern is wanted.
Attended = tuple[jax.Array, jax.Array | None, jax.Array | None]


def segment_positions(segment_ids_BxT: jax.Array) -> jax.Array:
  """Position of each token inside its segment (restarts at 0 where the segment id changes)."""
  t = jnp.arange(segment_ids_BxT.shape[1], dtype=jnp.int32)
  is_start_BxT = jnp.concatenate(
      [jnp.ones_like(segment_ids_BxT[:, :1], dtype=bool),
       segment_ids_BxT[:, 1:] != segment_ids_BxT[:, :-1]], axis=1)
  start_BxT = jax.lax.cummax(jnp.where(is_start_BxT, t, 0), axis=1)
  return t - start_BxT


def _stored(layout: LearnedLayout, init: jax.Array) -> jax.Array:
  """What the layer keeps as the ``nnx.Param`` of a learned variant parameter."""
  if layout.nonnegative:
    init = jnp.maximum(init, 1e-6)
    return init + jnp.log(-jnp.expm1(-init))  # softplus⁻¹, stable for large init
  return jnp.log(init) if layout.positive else init


def _passed(layout: LearnedLayout, param: jax.Array, positions_BxT: jax.Array) -> jax.Array:
  """The keyword argument a stored learned parameter gives for tokens at ``positions_BxT``."""
  if layout.nonnegative:
    value = jax.nn.softplus(param)
  else:
    value = jnp.exp(param) if layout.positive else param
  return value if layout.at_positions is None else layout.at_positions(value, positions_BxT)


class Attention(nnx.Module):
  """Multi-head (grouped-query) attention with the variant named by ``config.attention``.

  Everything variant-specific comes from the variant's registry entry
  (:class:`momentum_jax.attention.AttentionVariant`): its learned parameters become ``nnx.Param``
  in ``variant_params`` (except those ``config.attention_params`` fixes), stored and passed as
  its ``layouts`` say; its ``prepare`` step runs in the layer when a hook on its outputs is
  wanted; its per-token parameter module (``token_params``) is built and stored under its name.
  The call is three steps: :meth:`project` (q, k, v and RoPE), :meth:`attend` (the variant, the
  flux router, the pattern hooks) or, decoding, :meth:`attend_step` (the variant's decoding
  step), and :meth:`gate_heads` (gated attention and MoH). The MoH gates come first
  (:meth:`head_gates`); under ``moh_capacity_factor`` a full pass computes the routed heads only
  at the rows of the tokens that chose them (:meth:`attend_routed`).
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    d, n, k, h = config.d_model, config.num_heads, config.num_kv_heads, config.head_dim
    dense = lambda i, o, names: Dense(i, o, use_bias=False, dtype=config.compute_dtype,
                                      kernel_init=kernel_init(names), rngs=rngs)
    self.q_proj = dense(d, n * h, (EMBED, HEADS))
    self.k_proj = dense(d, k * h, (EMBED, HEADS))
    self.v_proj = dense(d, k * h, (EMBED, HEADS))
    self.o_proj = dense(n * h, d, (HEADS, EMBED))
    self.sinks = nnx.Param(jnp.zeros((n,))) if config.learnable_sinks else None
    variant = get_attention(config.attention)
    dims = AttentionDims(n, k, h, config.context_len)
    fixed, initial = dict(config.attention_params), dict(config.attention_init)

    def first_value(name: str, init: LearnedInit) -> jax.Array:
      value = init(dims, rngs.params())
      return jnp.full_like(value, initial[name]) if name in initial else value

    self.variant_params = nnx.Dict({
        name: nnx.Param(_stored(variant.layouts.get(name, LearnedLayout()),
                                first_value(name, init)))
        for name, init in variant.learned.items() if name not in fixed})
    dtype = config.compute_dtype
    self.gate = None if config.gate == "none" else AttentionGate(
        d, n, h, config.gate, dtype=dtype, rngs=rngs)
    self.moh = MoHRouter(d, n, config.moh_shared_heads, config.moh_top_k, dtype=dtype,
                         rngs=rngs) if config.moh else None
    if variant.token_params is not None:
      module = TOKEN_PARAM_MODULES[variant.token_params](d, n, dtype=dtype, rngs=rngs)
      setattr(self, variant.token_params, module)
    self.flux = FluxRouter(d, temperature=config.flux_temperature, dtype=dtype,
                           rngs=rngs) if config.flux_router else None

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
               segment_ids_BxT: jax.Array | None, recorder: Recorder, prefix: str,
               aux: AuxLosses | None = None, *, state: object | None = None,
               step: DecodeStep | None = None, fixed_params: FixedParams | None = None
               ) -> tuple[jax.Array, object | None]:
    """Attention output ``[B, T, D]`` and the layer's decoding state.

    Without ``state``, the full pass over the T rows. With the layer's decoding state and the
    ``step`` of the model (``momentum_jax.nn.decode_state``), the T rows are the new rows of a
    decoding step (``segment_ids_BxT`` unused: every row's are the step's): by the variant's
    decoding step, or for a :class:`RecomputeCache` by this same call over all the cache's rows;
    the state comes back with the new rows written. The layer's auxiliary losses go into ``aux``
    under ``prefix + "moh_load_balance"`` / ``prefix + "flux_sparsity"`` (and
    ``prefix + "moh_dropped"`` under ``moh_capacity_factor``) when it is a dict.
    ``fixed_params`` replace values of ``config.attention_params`` (a scanned layer's per-layer
    γ, as traced scalars).
    """
    cfg = self.config
    b, t, _ = x_BxTxD.shape
    if isinstance(state, RecomputeCache):
      return self._recompute(x_BxTxD, state, step, recorder, prefix, fixed_params)
    q_BxTxNxH, k_BxTxKxH, v_BxTxKxH = self.project(x_BxTxD, positions_BxT, recorder, prefix)
    gates_BxTxN, slots = self.head_gates(x_BxTxD, recorder, prefix, aux, full_pass=state is None)
    if self._routes_rows(slots, recorder, prefix):
      z_BxTxNxH = self.attend_routed(x_BxTxD, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, positions_BxT,
                                     segment_ids_BxT, gates_BxTxN, slots, recorder, prefix,
                                     fixed_params)
      gates_BxTxN = None  # applied at the routed rows
    elif state is None:
      z_BxTxNxH = self.attend(x_BxTxD, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, positions_BxT,
                              segment_ids_BxT, recorder, prefix, aux, fixed_params)
    else:
      z_BxTxNxH, state = self.attend_step(x_BxTxD, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH,
                                          positions_BxT, state, step, recorder, prefix,
                                          fixed_params)
    z_BxTxNxH = self.gate_heads(x_BxTxD, z_BxTxNxH, recorder, prefix, gates_BxTxN)
    return self.o_proj(z_BxTxNxH.reshape(b, t, cfg.num_heads * cfg.head_dim)), state

  def project(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, recorder: Recorder,
              prefix: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q ``[B, T, N, H]``, k and v ``[B, T, K, H]``, q and k rotated by RoPE when it is on."""
    cfg = self.config
    b, t, _ = x_BxTxD.shape
    q_BxTxNxH = self.q_proj(x_BxTxD).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k_BxTxKxH = self.k_proj(x_BxTxD).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v_BxTxKxH = self.v_proj(x_BxTxD).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    q_BxTxNxH = recorder.apply(prefix + "hook_q", q_BxTxNxH)
    k_BxTxKxH = recorder.apply(prefix + "hook_k", k_BxTxKxH)
    v_BxTxKxH = recorder.apply(prefix + "hook_v", v_BxTxKxH)
    if cfg.rope:
      q_BxTxNxH = apply_rope(q_BxTxNxH, positions_BxT, base=cfg.rope_base)
      k_BxTxKxH = apply_rope(k_BxTxKxH, positions_BxT, base=cfg.rope_base)
      q_BxTxNxH = recorder.apply(prefix + "hook_rot_q", q_BxTxNxH)
      k_BxTxKxH = recorder.apply(prefix + "hook_rot_k", k_BxTxKxH)
    return q_BxTxNxH, k_BxTxKxH, v_BxTxKxH

  def attend(self, x_BxTxD: jax.Array, q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array,
             v_BxTxKxH: jax.Array, positions_BxT: jax.Array, segment_ids_BxT: jax.Array | None,
             recorder: Recorder, prefix: str, aux: AuxLosses | None,
             fixed_params: FixedParams | None = None) -> jax.Array:
    """z ``[B, T, N, H]``: the variant on (prepared) q, k, v, through the flux router when it is
    on; the pattern is captured and, when a hook edits it, z moves by (W' − W)·v."""
    cfg = self.config
    variant = get_attention(cfg.attention)
    kwargs = self.variant_kwargs(variant, x_BxTxD, positions_BxT, segment_ids_BxT, recorder,
                                  prefix, fixed_params)
    wanted = [f for f, hook in variant.prepared_hooks.items() if recorder.wants(prefix + hook)]
    if wanted:
      prepared = variant.prepare(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids=segment_ids_BxT,
                                 **{p: kwargs[p] for p in variant.params if p in kwargs})
      kwargs.update(prepared.params)
      q_BxTxNxH, k_BxTxKxH, v_BxTxKxH = (
          recorder.apply(prefix + variant.prepared_hooks[f], x) if f in variant.prepared_hooks
          else x for f, x in zip("qkv", prepared[:3]))
    wants_pattern = (recorder.wants(prefix + "hook_pattern")
                     or recorder.wants(prefix + "hook_attn_scores"))

    def attend(window: int | None) -> Attended:
      if wants_pattern:
        return variant.reference(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, return_weights=True,
                                 window=window, **kwargs)
      return variant.fn(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, window=window, **kwargs), None, None

    if self.flux is None:
      z_BxTxNxH, scores_BxNxTxS, pattern_BxNxTxS = attend(cfg.window)
    else:
      z_BxTxNxH, scores_BxNxTxS, pattern_BxNxTxS = self._route(
          attend, x_BxTxD, segment_ids_BxT, wants_pattern, recorder, prefix, aux)
    if wants_pattern:
      z_BxTxNxH = self._pattern_hooks(z_BxTxNxH, scores_BxNxTxS, pattern_BxNxTxS, v_BxTxKxH,
                                      recorder, prefix)
    return recorder.apply(prefix + "hook_z", z_BxTxNxH)

  def attend_step(self, x_BxTxD: jax.Array, q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array,
                  v_BxTxKxH: jax.Array, positions_BxT: jax.Array, state: object,
                  step: DecodeStep, recorder: Recorder, prefix: str,
                  fixed_params: FixedParams | None = None) -> tuple[jax.Array, object]:
    """z ``[B, T, N, H]`` of the T new rows by the variant's decoding step, and its state.

    The step keeps no attention pattern and prepares q and k itself: the pattern, score and
    prepared-q/k hooks do not fire here, and a hook that would edit one raises ``ValueError``.
    """
    cfg = self.config
    variant = get_attention(cfg.attention)
    for hook in ("hook_attn_scores", "hook_pattern", *variant.prepared_hooks.values()):
      if recorder.edits(prefix + hook):
        raise ValueError(f"a hook on {prefix + hook!r} cannot edit a decoding step: "
                         f"attention={cfg.attention!r} decodes by its own step, which has no "
                         f"{hook}")
    kwargs = self.variant_kwargs(variant, x_BxTxD, positions_BxT, None, recorder, prefix,
                                  fixed_params)
    del kwargs["causal"], kwargs["segment_ids"]
    if isinstance(state, FluxCache):
      z_BxTxNxH, state = self._flux_step(x_BxTxD, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, state, step,
                                         recorder, prefix, kwargs)
    else:
      z_BxTxNxH, state = variant.decoding.step(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, state,
                                               step.context, window=cfg.window, **kwargs)
    return recorder.apply(prefix + "hook_z", z_BxTxNxH.astype(x_BxTxD.dtype)), state

  def gate_heads(self, x_BxTxD: jax.Array, z_BxTxNxH: jax.Array, recorder: Recorder,
                 prefix: str, head_gates_BxTxN: jax.Array | None) -> jax.Array:
    """z scaled by the output gate of gated attention, when it is on, and by the MoH head gates
    ``head_gates_BxTxN`` (None: MoH is off or its gates are already applied)."""
    if self.gate is not None:
      gate_BxTxNxG = recorder.apply(prefix + "hook_gate", self.gate.gate(x_BxTxD))
      z_BxTxNxH = z_BxTxNxH * gate_BxTxNxG.astype(z_BxTxNxH.dtype)
    if head_gates_BxTxN is not None:
      z_BxTxNxH = z_BxTxNxH * head_gates_BxTxN[..., None].astype(z_BxTxNxH.dtype)
    return z_BxTxNxH

  def head_gates(self, x_BxTxD: jax.Array, recorder: Recorder, prefix: str,
                 aux: AuxLosses | None, *, full_pass: bool
                 ) -> tuple[jax.Array | None, HeadSlots | None]:
    """The MoH head gates ``[B, T, N]`` (float32, after ``hook_head_gates``) and, under
    ``moh_capacity_factor`` in a full pass, the rows each routed head computes
    (``moh.head_slots``), the gates of the tokens over capacity then zeroed; ``(None, None)``
    without MoH. The load-balance loss and the dropped share go into ``aux``."""
    if self.moh is None:
      return None, None
    route = self.moh.route(x_BxTxD)
    gates_BxTxN = recorder.apply(prefix + "hook_head_gates", route.gates_BxTxN)
    if aux is not None:
      aux[prefix + "moh_load_balance"] = route.loss
    factor = self.config.moh_capacity_factor
    if factor is None or not full_pass or not self.moh.routed_heads:
      return gates_BxTxN, None
    slots = head_slots(route.chosen_BxTxE, head_capacity(
        x_BxTxD.shape[1], self.moh.top_k, self.moh.routed_heads, factor))
    if aux is not None:
      aux[prefix + "moh_dropped"] = dropped_fraction(route.chosen_BxTxE, slots.kept_BxTxE)
    return kept_gates(gates_BxTxN, slots.kept_BxTxE), slots

  def attend_routed(self, x_BxTxD: jax.Array, q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array,
                    v_BxTxKxH: jax.Array, positions_BxT: jax.Array,
                    segment_ids_BxT: jax.Array | None, gates_BxTxN: jax.Array, slots: HeadSlots,
                    recorder: Recorder, prefix: str, fixed_params: FixedParams | None = None
                    ) -> jax.Array:
    """z ``[B, T, N, H]`` times the MoH gates: the variant's ``prepare`` step, then softmax
    attention with each routed head computed only at its ``slots`` (``moh.routed_head_attention``).
    """
    cfg = self.config
    variant = get_attention(cfg.attention)
    kwargs = self.variant_kwargs(variant, x_BxTxD, positions_BxT, segment_ids_BxT, recorder,
                                  prefix, fixed_params)
    if variant.prepare is not None:
      q_BxTxNxH, k_BxTxKxH, v_BxTxKxH = variant.prepare(
          q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids=segment_ids_BxT,
          **{p: kwargs[p] for p in variant.params if p in kwargs})[:3]
    return routed_head_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, gates_BxTxN, slots,
                                 causal=cfg.causal, window=cfg.window,
                                 segment_ids=segment_ids_BxT, sinks=kwargs["sinks"])

  def _routes_rows(self, slots: HeadSlots | None, recorder: Recorder, prefix: str) -> bool:
    """Whether the pass computes the routed heads at their slots only: with slots (a full pass
    under ``moh_capacity_factor``), without the flux router, and with no hook on z, the pattern
    or the prepared q and k, which need every head at every row (the dense form under the same
    kept gates then runs, with the same output)."""
    hooks = ("hook_z", "hook_pattern", "hook_attn_scores",
             *get_attention(self.config.attention).prepared_hooks.values())
    return (slots is not None and self.flux is None
            and not any(recorder.wants(prefix + hook) for hook in hooks))

  def variant_kwargs(self, variant: AttentionVariant, x_BxTxD: jax.Array,
                      positions_BxT: jax.Array, segment_ids_BxT: jax.Array | None,
                      recorder: Recorder, prefix: str, fixed_params: FixedParams | None = None
                      ) -> dict[str, object]:
    """The variant's keyword arguments: fixed (``fixed_params`` over ``config``'s), learned,
    per-token, masking and sinks."""
    cfg = self.config
    kwargs = {} if variant.model_params is None else dict(variant.model_params(AttentionDims(
        cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.context_len)))
    kwargs.update(cfg.attention_params)
    kwargs.update(fixed_params or {})
    for name, param in self.variant_params.items():
      layout = variant.layouts.get(name, LearnedLayout())
      kwargs[name] = _passed(layout, param[...], positions_BxT)
    kwargs.update(causal=cfg.causal, segment_ids=segment_ids_BxT,
                  sinks=None if self.sinks is None else self.sinks[...])
    if variant.token_params is not None:
      hook = lambda name, value: recorder.apply(prefix + name, value)
      kwargs.update(getattr(self, variant.token_params).variant_kwargs(x_BxTxD, hook))
    return kwargs

  def _recompute(self, x_BxTxD: jax.Array, state: RecomputeCache, step: DecodeStep,
                 recorder: Recorder, prefix: str, fixed_params: FixedParams | None
                 ) -> tuple[jax.Array, RecomputeCache]:
    """The new rows' output by the full pass over all the cache's rows with the new ones
    written (rows not yet written are zeros and, the attention being causal, unseen)."""
    length, t = step.context.length, x_BxTxD.shape[1]
    x_BxSxD = jax.lax.dynamic_update_slice_in_dim(state.x, x_BxTxD.astype(state.x.dtype), length,
                                                  axis=1)
    out_BxSxD, _ = self(x_BxSxD, step.positions, step.context.segment_ids,
                        recorder.new_rows(length, t), prefix, fixed_params=fixed_params)
    return jax.lax.dynamic_slice_in_dim(out_BxSxD, length, t, axis=1), RecomputeCache(x_BxSxD)

  def _route(self, attend: Callable[[int | None], Attended], x_BxTxD: jax.Array,
             segment_ids_BxT: jax.Array | None, wants_pattern: bool, recorder: Recorder,
             prefix: str, aux: AuxLosses | None) -> Attended:
    """The flux router's per-token mix of full attention and the ``flux_window`` branch."""
    cfg = self.config
    choice_BxTx2 = recorder.apply(prefix + "hook_router", self.flux(x_BxTxD, segment_ids_BxT))
    if aux is not None:
      aux[prefix + "flux_sparsity"] = sparsity_loss(choice_BxTx2, cfg.flux_target)
    full, sparse = attend(None), attend(cfg.flux_window)
    z_BxTxNxH = (choice_BxTx2[..., 0, None, None] * full[0]
                 + choice_BxTx2[..., 1, None, None] * sparse[0]).astype(full[0].dtype)
    if not wants_pattern:
      return z_BxTxNxH, None, None
    # Per query row: the scores and weights of the branch it took.
    row_BxNxTx1 = choice_BxTx2[:, None, :, 1:]
    scores_BxNxTxS = jnp.where(row_BxNxTx1 > 0.5, sparse[1], full[1])
    pattern_BxNxTxS = (1 - row_BxNxTx1) * full[2] + row_BxNxTx1 * sparse[2]
    return z_BxTxNxH, scores_BxNxTxS, pattern_BxNxTxS

  def _flux_step(self, x_BxTxD: jax.Array, q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array,
                 v_BxTxKxH: jax.Array, state: FluxCache, step: DecodeStep, recorder: Recorder,
                 prefix: str, kwargs: dict[str, object]) -> tuple[jax.Array, FluxCache]:
    """The flux layer's decoding step: at row 0 the router's choice at the last new row becomes
    each sequence's decision; every step computes only the branch its sequence chose."""
    context, t = step.context, x_BxTxD.shape[1]
    ids_BxT = None if context.segment_ids is None else jax.lax.dynamic_slice_in_dim(
        context.segment_ids, context.length, t, axis=1)
    first = context.length == 0
    chosen_B = jnp.argmax(self.flux(x_BxTxD, ids_BxT)[:, -1], axis=-1) == 1
    sparse_B = jnp.where(first, chosen_B, state.sparse)
    choice_BxTx2 = jax.nn.one_hot(jnp.broadcast_to(sparse_B[:, None].astype(jnp.int32),
                                                   x_BxTxD.shape[:2]), 2,
                                  dtype=jnp.float32)
    edited_BxTx2 = jax.lax.stop_gradient(recorder.apply(prefix + "hook_router", choice_BxTx2))
    sparse_B = jnp.where(first, edited_BxTx2[:, -1, 1] > 0.5, state.sparse)
    return flux_decode_step(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, state, context, sparse_B,
                            window=self.config.flux_window, **kwargs)

  def _pattern_hooks(self, z_BxTxNxH: jax.Array, scores_BxNxTxS: jax.Array,
                     pattern_BxNxTxS: jax.Array, v_BxTxKxH: jax.Array, recorder: Recorder,
                     prefix: str) -> jax.Array:
    """Captures scores and pattern; an edited pattern W' moves z by (W' − W)·v."""
    recorder.apply(prefix + "hook_attn_scores", scores_BxNxTxS)  # observe only
    edited_BxNxTxS = recorder.apply(prefix + "hook_pattern", pattern_BxNxTxS)
    if not recorder.edits(prefix + "hook_pattern"):
      return z_BxTxNxH
    # Exact for every variant whose output is pattern · v plus a term that does not depend on the
    # pattern (not for kv_shift, whose values are shifted).
    v_BxTxNxH = repeat_kv(v_BxTxKxH, self.config.num_heads).astype(jnp.float32)
    delta_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", edited_BxNxTxS - pattern_BxNxTxS, v_BxTxNxH,
                               precision=jax.lax.Precision.HIGHEST)
    return (z_BxTxNxH + delta_BxTxNxH).astype(z_BxTxNxH.dtype)


def _apply_block(graphdef: nnx.GraphDef, x_BxTxD: jax.Array, layer: tuple, *,
                 positions_BxT: jax.Array, segment_ids_BxT: jax.Array | None,
                 step: DecodeStep | None, with_aux: bool) -> tuple[jax.Array, tuple]:
  """One block as a pure function (the body of the layer scan and of ``jax.checkpoint``):
  ``layer = (params, rest, fixed_params, decoding state)`` → ``(x, (rest, state, aux))``, with
  the block's updated module state and its auxiliary losses keyed ``"attn.<name>"``."""
  params, rest, fixed_params, state = layer
  block = nnx.merge(graphdef, params, rest)
  aux: AuxLosses | None = {} if with_aux else None
  x_BxTxD, state = block(x_BxTxD, positions_BxT, segment_ids_BxT, NO_CAPTURE, "", aux,
                         state=state, step=step, fixed_params=fixed_params)
  return x_BxTxD, (nnx.state(block, nnx.Not(nnx.Param)), state, aux or {})


class Mlp(nnx.Module):
  """GELU MLP: W_out · gelu(W_in · x)."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    dense = lambda i, o, names: Dense(i, o, use_bias=False, dtype=config.compute_dtype,
                                      kernel_init=kernel_init(names), rngs=rngs)
    self.up = dense(config.d_model, config.mlp_dim, (EMBED, MLP))
    self.down = dense(config.mlp_dim, config.d_model, (MLP, EMBED))

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    return self.down(jax.nn.gelu(self.up(x_BxTxD)))


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)) when ``mlp_dim > 0``.

  The same call serves the full pass and a decoding step: given the layer's decoding ``state``
  and the model's ``step``, the T rows are new rows, and the state comes back with them written.
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    norm = lambda: nnx.RMSNorm(config.d_model, epsilon=config.norm_eps,
                               dtype=config.compute_dtype, scale_init=norm_scale_init(), rngs=rngs)
    self.attn_norm = norm()
    self.attn = Attention(config, rngs=rngs)
    if config.mlp_dim:
      self.mlp_norm = norm()
      self.mlp = Mlp(config, rngs=rngs)
    else:
      self.mlp_norm = self.mlp = None

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
               segment_ids_BxT: jax.Array | None, recorder: Recorder, prefix: str,
               aux: AuxLosses | None = None, *, state: object | None = None,
               step: DecodeStep | None = None, fixed_params: FixedParams | None = None
               ) -> tuple[jax.Array, object | None]:
    x_BxTxD = recorder.apply(prefix + "hook_resid_pre", x_BxTxD)
    attn_out, state = self.attn(self.attn_norm(x_BxTxD), positions_BxT, segment_ids_BxT,
                                recorder, prefix + "attn.", aux, state=state, step=step,
                                fixed_params=fixed_params)
    x_BxTxD = x_BxTxD + recorder.apply(prefix + "hook_attn_out", attn_out)
    if self.mlp is not None:
      x_BxTxD = recorder.apply(prefix + "hook_resid_mid", x_BxTxD)
      mlp_out = self.mlp(self.mlp_norm(x_BxTxD))
      x_BxTxD = x_BxTxD + recorder.apply(prefix + "hook_mlp_out", mlp_out)
    return recorder.apply(prefix + "hook_resid_post", x_BxTxD), state


class Transformer(nnx.Module):
  """Decoder-only transformer: ``logits_BxTxV = model(tokens_BxT)``.

  Example:
    >>> from flax import nnx
    >>> cfg = TransformerConfig(vocab_size=64, context_len=49, attention="momentum",
    ...                         attention_params={"gamma": 0.5})
    >>> model = Transformer(cfg, rngs=nnx.Rngs(0))
    >>> logits, cache = model.run_with_cache(jnp.zeros((2, 49), jnp.int32),
    ...                                      names_filter="blocks.0.attn.hook_pattern")

  Input checks: the shape and dtype of ``tokens``, ``positions`` and ``segment_ids`` and
  ``seq_len <= context_len`` raise ``ValueError`` / ``TypeError`` while tracing. Token ids must
  be in ``[0, vocab_size)`` ("tokens must be in [0, vocab_size=64), got a token id of 64 at
  tokens[0, 5]"; out of range, the embedding gives NaN logits above and wraps silently below):
  concrete ids (an eager call) raise ``ValueError`` at once. Traced values are checked only under
  :func:`momentum_jax.nn.checked`, which holds under ``jax.jit``: the token ids, and a traced γ
  of momentum attention must be >= 0 and not NaN. Without ``checked`` the traced model emits no
  value check and costs nothing more::

    >>> logits = checked(jax.jit(lambda tokens: model(tokens)))(tokens_BxT)

  Every method runs :meth:`forward`, the one forward path of training, prefill and decoding:
  with a decoding state (``momentum_jax.nn.init_cache``) the tokens are the new rows of each
  sequence, the blocks run the same code on them, the hooks fire under the same names, and the
  state comes back with the rows written (``momentum_jax.nn.decode`` is this call).
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed = nnx.Embed(config.vocab_size, config.d_model, dtype=config.compute_dtype,
                           embedding_init=embedding_init(), rngs=rngs)
    blocks = [Block(config.layer(index), rngs=rngs) for index in range(config.num_layers)]
    if config.scan_layers:  # the same draws as unscanned, stacked on a leading layer axis
      self.blocks = nnx.merge(nnx.split(blocks[0])[0],
                              stack_states([nnx.state(block) for block in blocks]))
    else:
      self.blocks = nnx.List(blocks)
    self.final_norm = nnx.RMSNorm(config.d_model, epsilon=config.norm_eps,
                                  dtype=config.compute_dtype, scale_init=norm_scale_init(),
                                  rngs=rngs)
    self.unembed = None if config.tie_embeddings else Dense(
        config.d_model, config.vocab_size, use_bias=False, dtype=config.compute_dtype,
        kernel_init=kernel_init((EMBED, VOCAB)), rngs=rngs)
    if config.param_dtype != "float32":
      # Drawn in float32 (the same values as a float32 model), stored in param_dtype.
      for _, variable in nnx.iter_graph(self):
        if isinstance(variable, nnx.Param):
          variable.set_value(variable.get_value().astype(config.param_dtype))

  def __call__(self, tokens_BxT: jax.Array, *, positions_BxT: jax.Array | None = None,
               segment_ids_BxT: jax.Array | None = None) -> jax.Array:
    """Float32 next-token logits [B,T,V]."""
    return self.forward(tokens_BxT, positions_BxT=positions_BxT,
                        segment_ids_BxT=segment_ids_BxT)[0]

  def learned_attention_values(self, max_size: int = 64) -> dict[str, float]:
    """The learned attention parameters with at most ``max_size`` entries per layer, as the
    variant receives them (after softplus / exp), flattened, e.g. ``{"gamma/layer0/1": 0.42}``
    (kv head 1) for ``attention="momentum_learned"``; scalars are ``"name/layer0"``. What the
    trainer logs."""
    cfg = self.config
    if cfg.scan_layers:
      per_layer = [{name: param[...][index]
                    for name, param in self.blocks.attn.variant_params.items()}
                   for index in range(cfg.num_layers)]
    else:
      per_layer = [{name: param[...] for name, param in block.attn.variant_params.items()}
                   for block in self.blocks]
    values = {}
    for index, params in enumerate(per_layer):
      variant = get_attention(cfg.layer(index).attention)
      for name, param in params.items():
        layout = variant.layouts.get(name, LearnedLayout())
        if param.size > max_size or layout.at_positions is not None:
          continue
        value = np.asarray(jax.device_get(_passed(layout, param, None)), np.float64)
        if value.ndim == 0:
          values[f"{name}/layer{index}"] = float(value)
        else:
          values.update({f"{name}/layer{index}/{j}": float(v)
                         for j, v in enumerate(value.reshape(-1))})
    return values

  def run_with_cache(self, tokens_BxT: jax.Array, names_filter: NamesFilter = None, *,
                     positions_BxT: jax.Array | None = None,
                     segment_ids_BxT: jax.Array | None = None,
                     decode_state: DecodeState | None = None
                     ) -> (tuple[jax.Array, Activations]
                           | tuple[jax.Array, Activations, DecodeState]):
    """Logits and the activations whose hook names pass ``names_filter`` (None = all).

    With a ``decode_state`` the tokens are a decoding step's new rows (:meth:`forward`); it
    returns ``(logits, activations, decode_state)``, the activations of the new rows, as the
    full pass captures them at those rows (see ``hooks.py`` for the pattern's).
    """
    recorder = Recorder(names_filter)
    logits, decode_state = self.forward(tokens_BxT, positions_BxT=positions_BxT,
                                        segment_ids_BxT=segment_ids_BxT,
                                        decode_state=decode_state, recorder=recorder)
    if decode_state is None:
      return logits, recorder.cache
    return logits, recorder.cache, decode_state

  def run_with_hooks(self, tokens_BxT: jax.Array,
                     fwd_hooks: Iterable[tuple[str, HookFn]] = (), *,
                     positions_BxT: jax.Array | None = None,
                     segment_ids_BxT: jax.Array | None = None,
                     decode_state: DecodeState | None = None
                     ) -> jax.Array | tuple[jax.Array, DecodeState]:
    """Logits of a forward pass in which each ``(name, fn)`` of ``fwd_hooks`` replaces the
    activation ``name`` by ``fn(activation, name)`` (None keeps it), as TransformerLens does.
    With a ``decode_state``, ``(logits, decode_state)`` of a decoding step (:meth:`forward`).

    Works under ``jax.jit`` and ``jax.grad`` (the hooks are traced with the model). An edited
    ``blocks.{l}.attn.hook_pattern`` moves z by (W' − W)·v; under ``attention="momentum"`` the
    sheared q and k are ``hook_q_shear`` / ``hook_k_shear``. The shape of an activation is
    kept; hooks on ``hook_attn_scores`` observe only.

    Example:
      >>> model = Transformer(TransformerConfig(vocab_size=8, context_len=4), rngs=nnx.Rngs(0))
      >>> def previous_token(pattern, name):  # every query attends to the token before it
      ...   return jnp.broadcast_to(jnp.eye(4, k=-1).at[0, 0].set(1.0), pattern.shape)
      >>> logits = model.run_with_hooks(jnp.zeros((1, 4), jnp.int32),
      ...                               fwd_hooks=[("blocks.0.attn.hook_pattern", previous_token)])
    """
    recorder = Recorder((), fwd_hooks=fwd_hooks)
    logits, decode_state = self.forward(tokens_BxT, positions_BxT=positions_BxT,
                                        segment_ids_BxT=segment_ids_BxT,
                                        decode_state=decode_state, recorder=recorder)
    return logits if decode_state is None else (logits, decode_state)

  def logits_and_aux_loss(self, tokens_BxT: jax.Array, *, positions_BxT: jax.Array | None = None,
                          segment_ids_BxT: jax.Array | None = None
                          ) -> tuple[jax.Array, AuxLosses]:
    """Logits and the auxiliary losses of the attention layers, to add to the training loss.

    Returns ``(logits_BxTxV, aux)``; ``aux["total"]`` is the weighted sum to add to the task loss,

        total = moh_loss_weight · mean_l L_lb^l + flux_loss_weight · mean_l L_sparsity^l,

    and, for the options that are on, ``aux["moh_load_balance"]``, ``aux["flux_sparsity"]`` and
    (under ``moh_capacity_factor``, not in the total) ``aux["moh_dropped"]``, the share of MoH
    head assignments over capacity (means over layers), and the per-layer values under
    ``"blocks.{l}.attn.<name>"``. Float32
    scalars; ``total`` is 0 when no layer has a loss. The trainer in ``momentum_jax.train``
    calls this method and adds ``aux["total"]`` to the task loss.
    """
    aux: AuxLosses = {}
    logits, _ = self.forward(tokens_BxT, positions_BxT=positions_BxT,
                             segment_ids_BxT=segment_ids_BxT, aux=aux)
    cfg = self.config
    total = jnp.float32(0.0)
    for name, weight in (("moh_load_balance", cfg.moh_loss_weight),
                         ("flux_sparsity", cfg.flux_loss_weight)):
      per_layer = [value for key, value in aux.items() if key.endswith("attn." + name)]
      if per_layer:
        aux[name] = jnp.mean(jnp.stack(per_layer))
        total = total + weight * aux[name]
    dropped = [value for key, value in aux.items() if key.endswith("attn.moh_dropped")]
    if dropped:
      aux["moh_dropped"] = jnp.mean(jnp.stack(dropped))
    aux["total"] = total
    return logits, aux

  def forward(self, tokens_BxT: jax.Array, *, positions_BxT: jax.Array | None = None,
              segment_ids_BxT: jax.Array | None = None, decode_state: DecodeState | None = None,
              recorder: Recorder = NO_CAPTURE, aux: AuxLosses | None = None
              ) -> tuple[jax.Array, DecodeState | None]:
    """Float32 logits ``[B, T, V]`` and the decoding state: the one forward path.

    Without ``decode_state``, the full pass over T tokens at ``positions_BxT`` (default: 0, 1, ...
    from each segment start of ``segment_ids_BxT``). With one (``momentum_jax.nn.init_cache``),
    the T tokens are each sequence's new rows after its ``length`` rows: ``segment_ids_BxT`` are
    the new rows' (a cache with ``segments=True`` only; None continues each sequence's last
    segment), positions count on from the row before (from 0 at a segment start), every block
    runs on the new rows with its layer's state, and the state comes back with the rows written;
    the logits equal the full pass's at those rows. The activations go through ``recorder``
    (captures and forward hooks) and the layers' auxiliary losses into ``aux`` when it is a dict.

    Raises:
      ValueError: bad token, position or segment shapes (see the class); concrete token ids
        outside ``[0, vocab_size)``; decoding, tokens not ``[B, T]`` with the state's B,
        positions given, segment ids that do not fit the state, or (with a concrete length)
        tokens past the state's ``max_len``.
    """
    tokens_BxT = jnp.asarray(tokens_BxT)
    step = None
    layer_states = None if self.config.scan_layers else (None,) * self.config.num_layers
    if decode_state is not None:
      check_decodable(self.config)
      if positions_BxT is not None:
        raise ValueError("positions are counted by the decoding state: give positions_BxT=None "
                         "with a decode_state")
      decode_state, step, positions_BxT = begin_step(decode_state, tokens_BxT, segment_ids_BxT)
      layer_states, segment_ids_BxT = decode_state.layers, None
    self._validate_inputs(tokens_BxT, positions_BxT, segment_ids_BxT)
    check_token_ids(tokens_BxT, self.config.vocab_size)
    if positions_BxT is None:
      if segment_ids_BxT is None:
        positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
      else:
        positions_BxT = segment_positions(segment_ids_BxT)
    x_BxTxD = recorder.apply("hook_embed", self.embed(tokens_BxT))
    x_BxTxD, layers = self._run_blocks(x_BxTxD, positions_BxT, segment_ids_BxT, recorder, aux,
                                       layer_states, step)
    x_BxTxD = recorder.apply("ln_final.hook_normalized", self.final_norm(x_BxTxD))
    if self.unembed is None:
      logits_BxTxV = self.embed.attend(x_BxTxD)
    else:
      logits_BxTxV = self.unembed(x_BxTxD)
    if decode_state is not None:
      decode_state = decode_state._replace(
          layers=layers, length=decode_state.length + jnp.asarray(tokens_BxT.shape[1], jnp.int32))
    return logits_BxTxV.astype(jnp.float32), decode_state

  def _run_blocks(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
                  segment_ids_BxT: jax.Array | None, recorder: Recorder, aux: AuxLosses | None,
                  layer_states: object, step: DecodeStep | None) -> tuple[jax.Array, object]:
    """The residual stream after every block, and the layers' decoding states (a tuple, or for
    ``scan_layers`` one state stacked on a leading layer axis; None entries without decoding).

    Unscanned, the blocks run in turn, each under ``jax.checkpoint`` with the ``remat`` policy
    when nothing is recorded. Scanned, one ``jax.lax.scan`` over the stacked parameters runs
    them (its body rematerialised by the policy) when nothing is recorded, and otherwise each
    layer's slice in turn, so the hooks fire under their layer's name. Inside a
    ``partitioning.layer_weight_placement`` the scan body places each layer's weights (FSDP:
    gathers them) and never saves them for the backward pass, whatever the policy.
    """
    cfg = self.config
    if ACTIVE_COLLECTOR.get() is not None and (cfg.scan_layers or cfg.remat != "none"):
      raise ValueError(
          f"value_grad_and_layer_stats (MKOR's layer statistics) observes each Dense layer in "
          f"Python, which a scan or a checkpoint hides: it needs scan_layers=False and "
          f"remat='none', got scan_layers={cfg.scan_layers}, remat={cfg.remat!r}")
    layer_fn = functools.partial(
        _apply_block, positions_BxT=positions_BxT, segment_ids_BxT=segment_ids_BxT, step=step,
        with_aux=aux is not None)
    if cfg.scan_layers and recorder.records_nothing:
      return self._scan_blocks(x_BxTxD, layer_fn, aux, layer_states)
    if cfg.scan_layers:
      return self._unrolled_blocks(x_BxTxD, positions_BxT, segment_ids_BxT, recorder, aux,
                                   layer_states, step)
    states = []
    for layer, (block, state) in enumerate(zip(self.blocks, layer_states, strict=True)):
      prefix = f"blocks.{layer}."
      if cfg.remat == "none" or not recorder.records_nothing:
        x_BxTxD, state = block(x_BxTxD, positions_BxT, segment_ids_BxT, recorder, prefix, aux,
                               state=state, step=step)
      else:
        graphdef, params, rest = nnx.split(block, nnx.Param, ...)
        apply = rematerialised(functools.partial(layer_fn, graphdef), cfg.remat, in_scan=False)
        x_BxTxD, (rest, state, layer_aux) = apply(x_BxTxD, (params, rest, {}, state))
        nnx.update(block, rest)
        if aux is not None:
          aux.update({prefix + name: value for name, value in layer_aux.items()})
      states.append(state)
    return x_BxTxD, tuple(states)

  def _scan_blocks(self, x_BxTxD: jax.Array, layer_fn: Callable[..., tuple],
                   aux: AuxLosses | None, layer_states: object) -> tuple[jax.Array, object]:
    """The stacked blocks by one ``jax.lax.scan``: the carry is the residual stream, the inputs
    each layer's parameters, module state, per-layer fixed parameters and decoding state."""
    cfg = self.config
    graphdef, params, rest = nnx.split(self.blocks, nnx.Param, ...)
    varying = cfg.layer_varying_params()
    fixed = {name: jnp.asarray([dict(cfg.layer(index).attention_params)[name]
                                for index in range(cfg.num_layers)], jnp.float32)
             for name in varying}

    def body(x_BxTxD: jax.Array, layer: tuple) -> tuple[jax.Array, tuple]:
      layer_params, layer_rest, layer_fixed, state = layer
      layer_params = placed_layer_weights(unstacked_variables(layer_params))
      return layer_fn(graphdef, x_BxTxD, (layer_params, unstacked_variables(layer_rest),
                                          layer_fixed, state))

    body = rematerialised(body, cfg.remat, in_scan=True,
                          unsaved=(PLACED_WEIGHT,) if layer_weights_placed() else ())
    x_BxTxD, (rest, layer_states, layer_aux) = jax.lax.scan(
        body, x_BxTxD, (params, rest, fixed, layer_states))
    nnx.update(self.blocks, stacked_variables(rest))
    if aux is not None:
      aux.update({f"blocks.{layer}.{name}": value[layer] for name, value in layer_aux.items()
                  for layer in range(cfg.num_layers)})
    return x_BxTxD, layer_states

  def _unrolled_blocks(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
                       segment_ids_BxT: jax.Array | None, recorder: Recorder,
                       aux: AuxLosses | None, layer_states: object, step: DecodeStep | None
                       ) -> tuple[jax.Array, object]:
    """The stacked blocks one layer's slice at a time, hooked under ``blocks.{l}.``."""
    cfg = self.config
    graphdef, params, rest = nnx.split(self.blocks, nnx.Param, ...)
    varying = cfg.layer_varying_params()
    rests, states = [], []
    for layer in range(cfg.num_layers):
      block = nnx.merge(graphdef, layer_view(params, layer), layer_view(rest, layer))
      state = None if layer_states is None else jax.tree.map(lambda a: a[layer], layer_states)
      fixed = {name: dict(cfg.layer(layer).attention_params)[name] for name in varying}
      x_BxTxD, state = block(x_BxTxD, positions_BxT, segment_ids_BxT, recorder,
                             f"blocks.{layer}.", aux, state=state, step=step, fixed_params=fixed)
      rests.append(nnx.state(block, nnx.Not(nnx.Param)))
      states.append(state)
    nnx.update(self.blocks, stack_states(rests))
    if layer_states is not None:
      layer_states = jax.tree.map(lambda *a: jnp.stack(a), *states)
    return x_BxTxD, layer_states

  def _validate_inputs(self, tokens_BxT, positions_BxT, segment_ids_BxT) -> None:
    if tokens_BxT.ndim != 2:
      raise ValueError(f"tokens must have shape [batch, seq], got tokens.shape={tokens_BxT.shape}")
    if not jnp.issubdtype(tokens_BxT.dtype, jnp.integer):
      raise TypeError(f"tokens must be integer token ids, got tokens.dtype={tokens_BxT.dtype}")
    seq_len = tokens_BxT.shape[1]
    if seq_len > self.config.context_len:
      raise ValueError(
          f"tokens has seq_len={seq_len} > context_len={self.config.context_len} "
          f"(tokens.shape={tokens_BxT.shape})")
    for name, arr in (("positions", positions_BxT), ("segment_ids", segment_ids_BxT)):
      if arr is not None and tuple(arr.shape) != tuple(tokens_BxT.shape):
        raise ValueError(
            f"{name} must have the shape of tokens, got {name}.shape={tuple(arr.shape)} and "
            f"tokens.shape={tuple(tokens_BxT.shape)}")
