"""Frozen, hashable configuration of the decoder-only transformer."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from momentum_jax.attention import AttentionDims, get_attention
from momentum_jax.nn.gated import GATE_MODES
from momentum_jax.nn.moh import ROUTED_ATTENTION

_DTYPES = ("float32", "bfloat16", "float16")
_PARAM_DTYPES = ("float32", "bfloat16")
#: The rematerialisation policies of ``TransformerConfig.remat`` (MaxText's names in brackets):
#: ``"none"`` saves every activation; ``"full"`` ("full") saves only each layer's input and
#: recomputes the layer in the backward pass (``jax.checkpoint_policies.nothing_saveable``);
#: ``"save_dots"`` ("minimal") also saves the results of the matmuls without batch dimensions,
#: the projections and the MLP, and recomputes the rest, the attention scores included
#: (``jax.checkpoint_policies.dots_with_no_batch_dims_saveable``).
REMAT_POLICIES = ("none", "full", "save_dots")


def _is_pair(item: object) -> bool:
  return isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)


def _frozen(value: Any) -> Any:
  """Lists (as JSON gives back tuples) as tuples, so the config stays hashable."""
  return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def _normalize_params(params: Any) -> tuple:
  """Shared parameters as a sorted tuple of pairs; per-layer ones as a tuple of those."""
  if isinstance(params, Mapping):
    params = tuple(params.items())
  params = tuple(params)
  if all(_is_pair(item) for item in params):
    return tuple(sorted((name, _frozen(value)) for name, value in params))
  return tuple(_normalize_params(layer) for layer in params)


def _per_layer(name: str, value: Any) -> bool:
  """Whether ``attention`` / normalised ``attention_params`` hold one entry per layer."""
  if name == "attention":
    return not isinstance(value, str)
  return bool(value) and not all(_is_pair(item) for item in value)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Decoder-only transformer with the attention variant chosen by name.

  Attributes:
    vocab_size: number of token ids.
    context_len: longest sequence the model accepts.
    num_layers: number of residual blocks.
    d_model: residual-stream width.
    num_heads: query heads N.
    head_dim: per-head width H (default ``d_model // num_heads``, which then must divide evenly).
    num_kv_heads: key/value heads K (default ``num_heads``; ``num_heads % K == 0`` for GQA).
    mlp_dim: hidden width of the GELU MLP; 0 makes the model attention-only.
    attention: a name from ``momentum_jax.attention.available_attention()``, or a sequence of
      ``num_layers`` names, one per layer (hybrids such as momentum in layer 0, softmax above).
    attention_params: fixed keyword arguments of the variant, e.g. ``{"gamma": 0.5}``, or a
      sequence of ``num_layers`` such mappings, one per layer (γ per layer); stored as sorted
      tuples of pairs so the config stays hashable. A learned parameter of the variant given a
      fixed value here is not learned. Every required parameter of the variant
      (``AttentionVariant.required_params``) must be given, and the values are checked by the
      variant's ``check_params`` when the config is built. :meth:`layer` gives the
      configuration of one layer.
    attention_init: initial values of the variants' learned parameters, e.g. ``{"gamma": 0.25}``
      for ``attention="momentum_learned"`` (each filled to its parameter's shape, in every layer
      that learns it); parameters not named start from the registry's initialiser.
    window: sliding-window size (keys per query, itself included); ``None`` = full causal.
    learnable_sinks: add one learnable sink logit per head to every softmax row.
    rope: rotate q and k with RoPE before the attention variant sees them.
    rope_base: RoPE wavelength base.
    tie_embeddings: reuse the token embedding as the output projection.
    norm_eps: RMSNorm epsilon.
    dtype: compute dtype of the matmuls and activations (logits are float32).
    param_dtype: dtype the parameters are stored in, ``"float32"`` (the default: float32 master
      weights under bfloat16 compute) or ``"bfloat16"``; drawn in float32 and cast, so a model
      differs from its float32 twin only by the rounding.
    causal: causal (decoder) masking; a variant registered as causal-only needs True and one
      registered as non-causal (``attention="agent"``) needs False.
    gate: output gate of gated attention (arXiv 2505.06708): ``"none"``, ``"elementwise"``
      (one sigmoid gate per head dimension) or ``"headwise"`` (one per head).
    moh: Mixture-of-Head routing of the heads (arXiv 2410.11842).
    moh_shared_heads: heads always active under ``moh``; the other heads are routed.
    moh_top_k: routed heads active per token under ``moh``.
    moh_loss_weight: weight of the load-balance loss in ``Transformer.logits_and_aux_loss``.
    moh_capacity_factor: None computes every head and gates them (the dense form); a float > 0
      computes each routed head only for the tokens that chose it, at most
      C = min(T, ⌈factor · T · moh_top_k / routed heads⌉) per sequence, the first by position
      (``momentum_jax.nn.moh.routed_head_attention``); tokens over capacity get that head's
      output as zero, their share reported as ``moh_dropped`` in the auxiliary losses. Needs
      ``moh`` and an attention in ``momentum_jax.nn.moh.ROUTED_ATTENTION``; decoding steps use
      the dense form without a capacity.
    flux_router: per-layer full-vs-sliding-window router (arXiv 2604.07394, our reading). The
      full pass computes both branches; decoding a softmax model computes only the branch each
      layer chose for each sequence at the prefill (``momentum_jax.nn.flux_router``).
    flux_window: window of the router's sparse branch (keys per query, itself included); a
      sparse layer decodes with a ring buffer of this many rows.
    flux_target: target fraction of sparse choices.
    flux_loss_weight: weight of the sparsity-target loss in ``Transformer.logits_and_aux_loss``.
    flux_temperature: Gumbel-softmax temperature of the router in training.
    scan_layers: stack the blocks' parameters on a leading layer axis (logical axis ``"layers"``,
      never sharded) and run them with one ``jax.lax.scan``, so compile time does not grow with
      depth and, under FSDP, each layer's weights are gathered inside the scan body. The layers
      must share one scan body: one attention variant, and the same fixed parameter names; a
      fixed parameter whose value differs between layers (γ per layer) must be a float, and the
      scanned layer takes it as a traced scalar. ``momentum_jax.nn.stack_layers`` /
      ``unstack_layers`` convert a model between the two layouts.
    remat: rematerialisation of each block in the backward pass, one of ``REMAT_POLICIES``
      (``"none"``, ``"full"``, ``"save_dots"``): the same values and gradients, less activation
      memory for more compute.

  Affine-scaled attention is ``attention="affine"``: the layer then projects α per token and head
  and keeps the running mean α_ma (``momentum_jax.nn.affine``). Every option above is off by
  default, so a config without them builds exactly the model it built before they existed.
  """

  vocab_size: int
  context_len: int
  num_layers: int = 1
  d_model: int = 128
  num_heads: int = 4
  head_dim: int | None = None
  num_kv_heads: int | None = None
  mlp_dim: int = 0
  attention: str = "softmax"
  attention_params: Any = ()
  attention_init: Any = ()
  window: int | None = None
  learnable_sinks: bool = False
  rope: bool = True
  rope_base: float = 10_000.0
  tie_embeddings: bool = True
  norm_eps: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"
  causal: bool = True
  gate: str = "none"
  moh: bool = False
  moh_shared_heads: int = 0
  moh_top_k: int = 1
  moh_loss_weight: float = 0.01
  moh_capacity_factor: float | None = None
  flux_router: bool = False
  flux_window: int = 16
  flux_target: float = 0.5
  flux_loss_weight: float = 0.01
  flux_temperature: float = 1.0
  scan_layers: bool = False
  remat: str = "none"

  def __post_init__(self):
    object.__setattr__(self, "attention_params", _normalize_params(self.attention_params))
    init = self.attention_init
    object.__setattr__(self, "attention_init", tuple(sorted(
        (init.items() if isinstance(init, Mapping) else (tuple(pair) for pair in init)))))
    if not isinstance(self.attention, str):
      object.__setattr__(self, "attention", tuple(self.attention))
    if self.head_dim is None:
      object.__setattr__(self, "head_dim", self._default_head_dim())
    if self.num_kv_heads is None:
      object.__setattr__(self, "num_kv_heads", self.num_heads)
    self._validate()

  def _default_head_dim(self) -> int:
    """``d_model // num_heads``; raises ``ValueError`` when num_heads does not divide d_model."""
    d_model, num_heads = self.d_model, self.num_heads
    if (isinstance(d_model, int) and isinstance(num_heads, int) and num_heads >= 1
        and d_model % num_heads):
      raise ValueError(
          f"d_model must be divisible by num_heads when head_dim is not given, got "
          f"d_model={d_model}, num_heads={num_heads} (d_model % num_heads = "
          f"{d_model % num_heads}); choose them so, or pass head_dim")
    return d_model // max(num_heads, 1)

  def _validate(self) -> None:
    for name in ("vocab_size", "context_len", "num_layers", "d_model", "num_heads", "head_dim",
                 "num_kv_heads"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
    if not isinstance(self.mlp_dim, int) or self.mlp_dim < 0:
      raise ValueError(f"mlp_dim must be an int >= 0 (0 = attention-only), got {self.mlp_dim!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads must be a multiple of num_kv_heads, got num_heads={self.num_heads}, "
          f"num_kv_heads={self.num_kv_heads}")
    if self.rope and self.head_dim % 2:
      raise ValueError(f"RoPE needs an even head_dim, got head_dim={self.head_dim}")
    if self.window is not None and (not isinstance(self.window, int) or self.window < 1):
      raise ValueError(f"window must be None or an int >= 1, got window={self.window!r}")
    if self.dtype not in _DTYPES:
      raise ValueError(f"dtype must be one of {_DTYPES}, got dtype={self.dtype!r}")
    if self.param_dtype not in _PARAM_DTYPES:
      raise ValueError(
          f"param_dtype must be one of {_PARAM_DTYPES}, got param_dtype={self.param_dtype!r}")
    if not (self.rope_base > 0 and math.isfinite(self.rope_base)):
      raise ValueError(f"rope_base must be a positive finite float, got {self.rope_base!r}")
    self._validate_layer_options()
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat must be one of {REMAT_POLICIES}, got remat={self.remat!r}")
    if not isinstance(self.scan_layers, bool):
      raise ValueError(f"scan_layers must be a bool, got scan_layers={self.scan_layers!r}")
    for name, value in (("attention", self.attention), ("attention_params",
                                                        self.attention_params)):
      if _per_layer(name, value) and len(value) != self.num_layers:
        raise ValueError(f"{name} per layer must have num_layers={self.num_layers} entries, got "
                         f"{len(value)}: {name}={value!r}")
    learned = set()
    for index in range(self.num_layers):
      name, params = self._layer_attention(index)
      try:
        self._validate_attention(name, params)
      except ValueError as error:
        if not self.per_layer:
          raise
        raise ValueError(f"layer {index}: {error}") from None
      learned |= set(get_attention(name).learned) - set(dict(params))
    for name, value in self.attention_init:
      if name not in learned:
        raise ValueError(f"attention_init names {name!r}, which no layer learns (learned: "
                         f"{sorted(learned)}); a fixed parameter goes in attention_params")
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
          value):
        raise ValueError(f"attention_init[{name!r}] must be a finite number, got {value!r}")
    if self.scan_layers:
      self._validate_scannable()

  def _validate_scannable(self) -> None:
    """Raises ``ValueError`` naming the field when the layers cannot share one scan body."""
    names = {self._layer_attention(index)[0] for index in range(self.num_layers)}
    if len(names) > 1:
      raise ValueError(
          f"scan_layers=True runs every layer through one scan body, but attention differs "
          f"between layers (attention={self.attention!r}); give scan_layers=False for a hybrid")
    keys = {tuple(name for name, _ in self._layer_attention(index)[1])
            for index in range(self.num_layers)}
    if len(keys) > 1:
      raise ValueError(
          f"scan_layers=True runs every layer through one scan body, but the layers fix "
          f"different attention_params names ({sorted(keys)}), so their parameters differ; give "
          f"every layer the same names, or scan_layers=False")
    for name in self.layer_varying_params():
      values = [dict(self._layer_attention(index)[1])[name] for index in range(self.num_layers)]
      if not all(isinstance(value, float) for value in values):
        raise ValueError(
            f"scan_layers=True passes a fixed parameter that differs between layers to the "
            f"scan body as a traced float, but attention_params[{name!r}] per layer is "
            f"{values!r}; give floats, or scan_layers=False")

  def layer_varying_params(self) -> tuple[str, ...]:
    """The names of the fixed attention parameters whose value differs between layers."""
    if not _per_layer("attention_params", self.attention_params):
      return ()
    layers = [dict(params) for params in self.attention_params]
    return tuple(sorted(name for name in layers[0]
                        if any(layer.get(name) != layers[0][name] for layer in layers)))

  def _layer_attention(self, index: int) -> tuple[str, tuple]:
    """Layer ``index``'s variant name and fixed parameters."""
    name = self.attention if isinstance(self.attention, str) else self.attention[index]
    params = self.attention_params
    return name, params[index] if _per_layer("attention_params", params) else params

  def _validate_attention(self, name: str, params: tuple) -> None:
    variant = get_attention(name)
    if variant.masking == "bidirectional" and self.causal:
      raise ValueError(
          f"attention={name!r} is non-causal: it needs causal=False, got causal=True")
    if variant.masking == "causal" and not self.causal:
      raise ValueError(
          f"attention={name!r} is causal only: it needs causal=True, got causal=False")
    fixed = dict(params)
    unknown = sorted(set(fixed) - set(variant.params))
    if unknown:
      raise ValueError(
          f"attention_params {unknown} are not parameters of attention={name!r}; "
          f"it takes {list(variant.params)}")
    missing = [p for p in variant.required_params if p not in fixed]
    if missing:
      raise ValueError(
          f"attention={name!r} needs attention_params {missing} (parameters without a "
          f"default that the model does not learn), got attention_params={fixed}")
    if variant.check_params is not None:
      variant.check_params(
          AttentionDims(self.num_heads, self.num_kv_heads, self.head_dim, self.context_len), fixed)

  @property
  def per_layer(self) -> bool:
    """Whether the layers differ in attention variant or fixed parameters."""
    return (_per_layer("attention", self.attention)
            or _per_layer("attention_params", self.attention_params))

  def layer(self, index: int) -> "TransformerConfig":
    """The configuration of layer ``index``: one variant name and its fixed parameters."""
    if not self.per_layer:
      return self
    name, params = self._layer_attention(index)
    learned = set(get_attention(name).learned) - set(dict(params))
    return dataclasses.replace(self, attention=name, attention_params=params, attention_init=tuple(
        (key, value) for key, value in self.attention_init if key in learned))

  def _validate_moh_capacity(self) -> None:
    factor = self.moh_capacity_factor
    if factor is None:
      return
    if (isinstance(factor, bool) or not isinstance(factor, (int, float))
        or not (factor > 0 and math.isfinite(factor))):
      raise ValueError(f"moh_capacity_factor must be None or a finite float > 0, got "
                       f"moh_capacity_factor={factor!r}")
    if not self.moh:
      raise ValueError(f"moh_capacity_factor={factor!r} routes MoH heads: it needs moh=True")
    names = {self.attention} if isinstance(self.attention, str) else set(self.attention)
    unsupported = sorted(names - set(ROUTED_ATTENTION))
    if unsupported:
      raise ValueError(
          f"moh_capacity_factor computes routed heads by softmax attention on (prepared) q and "
          f"k, which attention={unsupported[0]!r} is not: it supports {ROUTED_ATTENTION}; give "
          f"moh_capacity_factor=None for the dense form")

  def _validate_layer_options(self) -> None:
    if self.gate not in GATE_MODES:
      raise ValueError(f"gate must be one of {GATE_MODES}, got gate={self.gate!r}")
    if not self.causal and self.window is not None:
      raise ValueError(f"window={self.window} needs causal=True, got causal=False")
    for name in ("moh_loss_weight", "flux_loss_weight"):
      value = getattr(self, name)
      if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite float >= 0, got {name}={value!r}")
    if self.moh:
      routed = self.num_heads - self.moh_shared_heads
      if not 0 <= self.moh_shared_heads <= self.num_heads:
        raise ValueError(
            f"moh_shared_heads must be in [0, num_heads={self.num_heads}], "
            f"got moh_shared_heads={self.moh_shared_heads!r}")
      if routed and not 1 <= self.moh_top_k <= routed:
        raise ValueError(
            f"moh_top_k must be in [1, {routed}] (num_heads - moh_shared_heads routed heads), "
            f"got moh_top_k={self.moh_top_k!r}")
    self._validate_moh_capacity()
    if self.flux_router:
      if not isinstance(self.flux_window, int) or self.flux_window < 1:
        raise ValueError(f"flux_window must be an int >= 1, got flux_window={self.flux_window!r}")
      if self.window is not None or not self.causal:
        raise ValueError(
            f"flux_router chooses between full causal attention and flux_window: it needs "
            f"window=None and causal=True, got window={self.window!r}, causal={self.causal!r}")
      if not 0.0 <= self.flux_target <= 1.0:
        raise ValueError(f"flux_target must be in [0, 1], got flux_target={self.flux_target!r}")
      if not self.flux_temperature > 0:
        raise ValueError(
            f"flux_temperature must be > 0, got flux_temperature={self.flux_temperature!r}")

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  def to_dict(self) -> dict[str, Any]:
    """JSON-serialisable form (``attention_params`` as a dict, or a list of dicts per layer)."""
    d = dataclasses.asdict(self)
    params = self.attention_params
    d["attention_params"] = ([dict(p) for p in params]
                             if _per_layer("attention_params", params) else dict(params))
    d["attention_init"] = dict(self.attention_init)
    if not isinstance(self.attention, str):
      d["attention"] = list(self.attention)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "TransformerConfig":
    return cls(**d)
