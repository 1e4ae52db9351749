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
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
from flax import nnx

from momentum_jax.attention import AttentionDims, apply_rope, get_attention, momentum_shear
from momentum_jax.attention.softmax import repeat_kv
from momentum_jax.nn.affine import AffineAlpha
from momentum_jax.nn.config import TransformerConfig
from momentum_jax.nn.dense import Dense
from momentum_jax.nn.flux_router import FluxRouter, sparsity_loss
from momentum_jax.nn.gated import AttentionGate
from momentum_jax.nn.hooks import NO_CAPTURE, HookFn, NamesFilter, Recorder
from momentum_jax.nn.moh import MoHRouter

AuxLosses = dict[str, jax.Array]

# Learned variant parameters that are per-position tables (their initialisers give the keyword
# argument for one sequence of context_len tokens): the layer gathers its tokens' positions.
_POSITION_TABLES = {
    ("flash_bias", "q_bias"): lambda table, pos_BxT: table[0][pos_BxT],  # [B, T, N, R]
    ("flash_bias", "k_bias"): lambda table, pos_BxT: table[0][pos_BxT],  # [B, S, K, R]
    ("agent", "agent_bias"):  # [1, N, 1, C] -> [B, N, 1, S]
        lambda table, pos_BxT: jnp.moveaxis(table[0][..., pos_BxT], 2, 0),
}
# Learned variant parameters kept positive: the layer stores log(init) and passes exp(param).
_LOG_PARAMS = frozenset({("lightning", "decay")})

def segment_positions(segment_ids_BxT: jax.Array) -> jax.Array:
  """Position of each token inside its segment (restarts at 0 where the segment id changes)."""
  t = jnp.arange(segment_ids_BxT.shape[1], dtype=jnp.int32)
  is_start_BxT = jnp.concatenate(
      [jnp.ones_like(segment_ids_BxT[:, :1], dtype=bool),
       segment_ids_BxT[:, 1:] != segment_ids_BxT[:, :-1]], axis=1)
  start_BxT = jax.lax.cummax(jnp.where(is_start_BxT, t, 0), axis=1)
  return t - start_BxT


class Attention(nnx.Module):
  """Multi-head (grouped-query) attention with the variant named by ``config.attention``.

  The variant's registered learned parameters become ``nnx.Param`` in ``variant_params``, except
  those ``config.attention_params`` fixes. Lightning's decay is stored as its logarithm (passed
  as exp, so λ = exp(−decay) stays in (0, 1)); FlashBias factors and the agent bias are
  per-position tables gathered at the tokens' positions.
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    d, n, k, h = config.d_model, config.num_heads, config.num_kv_heads, config.head_dim
    dense = lambda i, o: Dense(i, o, use_bias=False, dtype=config.compute_dtype, rngs=rngs)
    self.q_proj = dense(d, n * h)
    self.k_proj = dense(d, k * h)
    self.v_proj = dense(d, k * h)
    self.o_proj = dense(n * h, d)
    self.sinks = nnx.Param(jnp.zeros((n,))) if config.learnable_sinks else None
    dims = AttentionDims(n, k, h, config.context_len)
    fixed = dict(config.attention_params)
    learned = {name: init for name, init in get_attention(config.attention).learned.items()
               if name not in fixed}
    stored = lambda name, x: jnp.log(x) if (config.attention, name) in _LOG_PARAMS else x
    self.variant_params = nnx.Dict({name: nnx.Param(stored(name, init(dims, rngs.params())))
                                    for name, init in learned.items()})
    dtype = config.compute_dtype
    self.gate = None if config.gate == "none" else AttentionGate(
        d, n, h, config.gate, dtype=dtype, rngs=rngs)
    self.moh = MoHRouter(d, n, config.moh_shared_heads, config.moh_top_k, dtype=dtype,
                         rngs=rngs) if config.moh else None
    self.affine = None if config.attention != "affine" else AffineAlpha(
        d, n, dtype=dtype, rngs=rngs)
    self.flux = FluxRouter(d, temperature=config.flux_temperature, dtype=dtype,
                           rngs=rngs) if config.flux_router else None

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
               segment_ids_BxT: jax.Array | None, recorder: Recorder, prefix: str,
               aux: AuxLosses | None = None) -> jax.Array:
    """Attention output ``[B, T, D]``; the layer's auxiliary losses go into ``aux`` under
    ``prefix + "moh_load_balance"`` / ``prefix + "flux_sparsity"`` when it is a dict."""
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

    variant = get_attention(cfg.attention)
    kwargs = dict(cfg.attention_params)
    for name, param in self.variant_params.items():
      value = param[...]
      if (cfg.attention, name) in _LOG_PARAMS:
        value = jnp.exp(value)
      fit = _POSITION_TABLES.get((cfg.attention, name))
      kwargs[name] = value if fit is None else fit(value, positions_BxT)
    kwargs.update(causal=cfg.causal, segment_ids=segment_ids_BxT,
                  sinks=None if self.sinks is None else self.sinks[...])
    if cfg.attention == "momentum" and (recorder.wants(prefix + "hook_q_shear")
                                        or recorder.wants(prefix + "hook_k_shear")):
      # Shear here so the sheared q and k can be captured or edited; γ = 0 leaves the variant's
      # own shear the identity, so the result is momentum attention exactly.
      gamma = jnp.asarray(kwargs["gamma"], jnp.float32)
      gamma_q = jnp.repeat(gamma, cfg.num_heads // cfg.num_kv_heads) if gamma.ndim else gamma
      shear = lambda x, g: momentum_shear(x, g, boundary=kwargs.get("boundary", "zero"),
                                          segment_ids=segment_ids_BxT)
      q_BxTxNxH = recorder.apply(prefix + "hook_q_shear", shear(q_BxTxNxH, gamma_q))
      k_BxTxKxH = recorder.apply(prefix + "hook_k_shear", shear(k_BxTxKxH, gamma))
      kwargs["gamma"] = 0.0
    if self.affine is not None:
      alpha_BxTxN, alpha_ma_N = self.affine(x_BxTxD)
      alpha_BxTxN = recorder.apply(prefix + "hook_alpha", alpha_BxTxN)
      kwargs.update(alpha_BxTxN=alpha_BxTxN, alpha_ma=alpha_ma_N)
    wants_pattern = (recorder.wants(prefix + "hook_pattern")
                     or recorder.wants(prefix + "hook_attn_scores"))

    def attend(window: int | None) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
      if wants_pattern:
        return variant.reference(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, return_weights=True,
                                 window=window, **kwargs)
      return variant.fn(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, window=window, **kwargs), None, None

    if self.flux is None:
      z_BxTxNxH, scores_BxNxTxS, pattern_BxNxTxS = attend(cfg.window)
    else:
      choice_BxTx2 = recorder.apply(prefix + "hook_router", self.flux(x_BxTxD, segment_ids_BxT))
      if aux is not None:
        aux[prefix + "flux_sparsity"] = sparsity_loss(choice_BxTx2, cfg.flux_target)
      full, sparse = attend(None), attend(cfg.flux_window)
      z_BxTxNxH = (choice_BxTx2[..., 0, None, None] * full[0]
                   + choice_BxTx2[..., 1, None, None] * sparse[0]).astype(full[0].dtype)
      scores_BxNxTxS = pattern_BxNxTxS = None
      if wants_pattern:  # per query row: the scores and weights of the branch it took
        row_BxNxTx1 = choice_BxTx2[:, None, :, 1:]
        scores_BxNxTxS = jnp.where(row_BxNxTx1 > 0.5, sparse[1], full[1])
        pattern_BxNxTxS = (1 - row_BxNxTx1) * full[2] + row_BxNxTx1 * sparse[2]
    if wants_pattern:
      recorder.apply(prefix + "hook_attn_scores", scores_BxNxTxS)  # observe only
      edited_BxNxTxS = recorder.apply(prefix + "hook_pattern", pattern_BxNxTxS)
      if recorder.edits(prefix + "hook_pattern"):
        # z moves by (W' − W)·v: exact for every variant whose output is pattern · v plus a
        # term that does not depend on the pattern (not for kv_shift, whose values are shifted).
        v_BxTxNxH = repeat_kv(v_BxTxKxH, cfg.num_heads).astype(jnp.float32)
        delta_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", edited_BxNxTxS - pattern_BxNxTxS,
                                   v_BxTxNxH, precision=jax.lax.Precision.HIGHEST)
        z_BxTxNxH = (z_BxTxNxH + delta_BxTxNxH).astype(z_BxTxNxH.dtype)
    z_BxTxNxH = recorder.apply(prefix + "hook_z", z_BxTxNxH)
    if self.gate is not None:
      gate_BxTxNxG = recorder.apply(prefix + "hook_gate", self.gate.gate(x_BxTxD))
      z_BxTxNxH = z_BxTxNxH * gate_BxTxNxG.astype(z_BxTxNxH.dtype)
    if self.moh is not None:
      head_gates_BxTxN, balance_loss = self.moh(x_BxTxD)
      head_gates_BxTxN = recorder.apply(prefix + "hook_head_gates", head_gates_BxTxN)
      if aux is not None:
        aux[prefix + "moh_load_balance"] = balance_loss
      z_BxTxNxH = z_BxTxNxH * head_gates_BxTxN[..., None].astype(z_BxTxNxH.dtype)
    return self.o_proj(z_BxTxNxH.reshape(b, t, cfg.num_heads * cfg.head_dim))


class Mlp(nnx.Module):
  """GELU MLP: W_out · gelu(W_in · x)."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    dense = lambda i, o: Dense(i, o, use_bias=False, dtype=config.compute_dtype, rngs=rngs)
    self.up = dense(config.d_model, config.mlp_dim)
    self.down = dense(config.mlp_dim, config.d_model)

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    return self.down(jax.nn.gelu(self.up(x_BxTxD)))


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)) when ``mlp_dim > 0``."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    norm = lambda: nnx.RMSNorm(config.d_model, epsilon=config.norm_eps,
                               dtype=config.compute_dtype, rngs=rngs)
    self.attn_norm = norm()
    self.attn = Attention(config, rngs=rngs)
    if config.mlp_dim:
      self.mlp_norm = norm()
      self.mlp = Mlp(config, rngs=rngs)
    else:
      self.mlp_norm = self.mlp = None

  def __call__(self, x_BxTxD, positions_BxT, segment_ids_BxT, recorder: Recorder,
               prefix: str, aux: AuxLosses | None = None) -> jax.Array:
    x_BxTxD = recorder.apply(prefix + "hook_resid_pre", x_BxTxD)
    attn_out = self.attn(self.attn_norm(x_BxTxD), positions_BxT, segment_ids_BxT, recorder,
                         prefix + "attn.", aux)
    x_BxTxD = x_BxTxD + recorder.apply(prefix + "hook_attn_out", attn_out)
    if self.mlp is not None:
      x_BxTxD = recorder.apply(prefix + "hook_resid_mid", x_BxTxD)
      mlp_out = self.mlp(self.mlp_norm(x_BxTxD))
      x_BxTxD = x_BxTxD + recorder.apply(prefix + "hook_mlp_out", mlp_out)
    return recorder.apply(prefix + "hook_resid_post", x_BxTxD)


class Transformer(nnx.Module):
  """Decoder-only transformer: ``logits_BxTxV = model(tokens_BxT)``.

  Example:
    >>> from flax import nnx
    >>> cfg = TransformerConfig(vocab_size=64, context_len=49, attention="momentum",
    ...                         attention_params={"gamma": 0.5})
    >>> model = Transformer(cfg, rngs=nnx.Rngs(0))
    >>> logits, cache = model.run_with_cache(jnp.zeros((2, 49), jnp.int32),
    ...                                      names_filter="blocks.0.attn.hook_pattern")
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed = nnx.Embed(config.vocab_size, config.d_model, dtype=config.compute_dtype,
                           rngs=rngs)
    self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
    self.final_norm = nnx.RMSNorm(config.d_model, epsilon=config.norm_eps,
                                  dtype=config.compute_dtype, rngs=rngs)
    self.unembed = None if config.tie_embeddings else Dense(
        config.d_model, config.vocab_size, use_bias=False, dtype=config.compute_dtype, rngs=rngs)

  def __call__(self, tokens_BxT: jax.Array, *, positions_BxT: jax.Array | None = None,
               segment_ids_BxT: jax.Array | None = None) -> jax.Array:
    """Float32 next-token logits [B,T,V]."""
    return self._forward(tokens_BxT, positions_BxT, segment_ids_BxT, NO_CAPTURE)

  def run_with_cache(self, tokens_BxT: jax.Array, names_filter: NamesFilter = None, *,
                     positions_BxT: jax.Array | None = None,
                     segment_ids_BxT: jax.Array | None = None
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Logits and the activations whose hook names pass ``names_filter`` (None = all)."""
    recorder = Recorder(names_filter)
    logits = self._forward(tokens_BxT, positions_BxT, segment_ids_BxT, recorder)
    return logits, recorder.cache

  def run_with_hooks(self, tokens_BxT: jax.Array,
                     fwd_hooks: Iterable[tuple[str, HookFn]] = (), *,
                     positions_BxT: jax.Array | None = None,
                     segment_ids_BxT: jax.Array | None = None) -> jax.Array:
    """Logits of a forward pass in which each ``(name, fn)`` of ``fwd_hooks`` replaces the
    activation ``name`` by ``fn(activation, name)`` (None keeps it), as TransformerLens does.

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
    return self._forward(tokens_BxT, positions_BxT, segment_ids_BxT, recorder)

  def logits_and_aux_loss(self, tokens_BxT: jax.Array, *, positions_BxT: jax.Array | None = None,
                          segment_ids_BxT: jax.Array | None = None
                          ) -> tuple[jax.Array, AuxLosses]:
    """Logits and the auxiliary losses of the attention layers, to add to the training loss.

    Returns ``(logits_BxTxV, aux)``; ``aux["total"]`` is the weighted sum to add to the task loss,

        total = moh_loss_weight · mean_l L_lb^l + flux_loss_weight · mean_l L_sparsity^l,

    and, for the options that are on, ``aux["moh_load_balance"]`` and ``aux["flux_sparsity"]``
    (means over layers) and the per-layer values under ``"blocks.{l}.attn.<name>"``. Float32
    scalars; ``total`` is 0 when no layer has a loss. The trainer in ``momentum_jax.train``
    calls this method and adds ``aux["total"]`` to the task loss.
    """
    aux: AuxLosses = {}
    logits = self._forward(tokens_BxT, positions_BxT, segment_ids_BxT, NO_CAPTURE, aux)
    cfg = self.config
    total = jnp.float32(0.0)
    for name, weight in (("moh_load_balance", cfg.moh_loss_weight),
                         ("flux_sparsity", cfg.flux_loss_weight)):
      per_layer = [value for key, value in aux.items() if key.endswith("attn." + name)]
      if per_layer:
        aux[name] = jnp.mean(jnp.stack(per_layer))
        total = total + weight * aux[name]
    aux["total"] = total
    return logits, aux

  def _forward(self, tokens_BxT, positions_BxT, segment_ids_BxT, recorder: Recorder,
               aux: AuxLosses | None = None):
    tokens_BxT = jnp.asarray(tokens_BxT)
    self._validate_inputs(tokens_BxT, positions_BxT, segment_ids_BxT)
    if positions_BxT is None:
      if segment_ids_BxT is None:
        positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
      else:
        positions_BxT = segment_positions(segment_ids_BxT)
    x_BxTxD = recorder.apply("hook_embed", self.embed(tokens_BxT))
    for layer, block in enumerate(self.blocks):
      x_BxTxD = block(x_BxTxD, positions_BxT, segment_ids_BxT, recorder, f"blocks.{layer}.",
                      aux)
    x_BxTxD = recorder.apply("ln_final.hook_normalized", self.final_norm(x_BxTxD))
    if self.unembed is None:
      logits_BxTxV = self.embed.attend(x_BxTxD)
    else:
      logits_BxTxV = self.unembed(x_BxTxD)
    return logits_BxTxV.astype(jnp.float32)

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
