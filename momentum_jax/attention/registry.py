"""Name → attention variant, so a model config can say ``attention="momentum"``.

Every registered variant has a fast form and a plain float32 reference of the same signature::

    fn(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, *, causal=True, window=None, segment_ids=None,
       bias=None, sinks=None, scale=None, **variant_params) -> out_BxTxNxH
    reference(..., return_weights=False) -> out_BxTxNxH
    reference(..., return_weights=True)  -> (out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS)

q and k arrive *after* the model's RoPE: registered variants never apply RoPE themselves.

The registry entry is the whole contract between a variant and the model (``momentum_jax.nn``
names no variant): which keyword arguments it takes, which of them a model learns and how it
stores them, which masking it supports, an optional ``prepare`` step whose outputs the model
exposes under hook names, an optional per-token parameter module, and an optional ``check_params``
validator of the values a model config fixes. The arguments a config must fix
(:attr:`AttentionVariant.required_params`) come from the signature of ``fn``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

import jax


class AttentionDims(NamedTuple):
  """The sizes an attention layer knows when it creates a variant's learned parameters."""

  num_heads: int
  num_kv_heads: int
  head_dim: int
  context_len: int


LearnedInit = Callable[[AttentionDims, jax.Array], jax.Array]
PositionGather = Callable[[jax.Array, jax.Array], jax.Array]
ModelParams = Callable[[AttentionDims], Mapping[str, object]]
Masking = Literal["any", "causal", "bidirectional"]
MASKINGS = ("any", "causal", "bidirectional")


class LearnedLayout(NamedTuple):
  """How a model stores one learned parameter and turns it into the keyword argument.

  Attributes:
    positive: the argument must stay > 0: the model stores log(init) and passes exp(param).
    nonnegative: the argument must stay >= 0 and may approach 0: the model stores
      softplus⁻¹(init) = log(e^init − 1) and passes softplus(param) = log(1 + e^param) (an
      initial value below 1e-6 is stored as softplus⁻¹(1e-6)).
    at_positions: the initialiser gives a table for one sequence of ``context_len`` tokens;
      ``at_positions(table, positions_BxT)`` gathers the rows of the tokens' positions.
  """

  positive: bool = False
  nonnegative: bool = False
  at_positions: PositionGather | None = None


class Prepared(NamedTuple):
  """Output of a variant's ``prepare`` step: the transformed q, k, v and the keyword arguments
  that finish the attention on them, ``fn(q, k, v, **params)``."""

  q: jax.Array
  k: jax.Array
  v: jax.Array
  params: dict[str, object]


Prepare = Callable[..., Prepared]


class Decoding(NamedTuple):
  """A variant's decoding form: a cache or recurrent state and a step over new rows.

  Attributes:
    init: ``init(batch, capacity, dims: AttentionDims, dtype) -> state``, the empty state of one
      layer; ``capacity`` is the rows a K/V cache keeps (``max_len``, or ``window``), unused by
      recurrent states.
    step: ``step(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, state, context, *, window, sinks, scale,
      **params) -> (out_BxTxNxH, state)`` for T new rows (q and k after RoPE), ``context`` a
      ``momentum_jax.attention.decoding.DecodeContext``; row for row equal to the causal ``fn``
      over the whole sequence.
  """

  init: Callable[..., object]
  step: Callable[..., tuple[jax.Array, object]]


CheckParams = Callable[[AttentionDims, Mapping[str, object]], None]


class AttentionVariant(NamedTuple):
  """A registered attention variant.

  Attributes:
    fn: the fast form.
    reference: the float32 reference of the same signature (with ``return_weights``).
    params: names of the variant-specific keyword arguments, e.g. ``("gamma", "boundary")``.
    learned: the parameters a model learns per layer, each with its initialiser
      ``init(dims: AttentionDims, key) -> array`` (e.g. kv_shift's per-kv-head ``alpha``/``beta``);
      a model creates them as ``nnx.Param`` unless its config fixes their value.
    layouts: how each learned parameter is stored and passed (:class:`LearnedLayout`); a learned
      parameter without an entry is stored as initialised and passed as is.
    masking: ``"any"``, ``"causal"`` (causal only) or ``"bidirectional"`` (non-causal only).
    prepare: optional ``prepare(q, k, v, *, segment_ids, **params) -> Prepared`` with
      ``fn(*prepared[:3], **prepared.params, ...)`` equal to ``fn(q, k, v, **params, ...)``: the
      first step of the variant (the shear of momentum attention), split off so a model can
      capture or edit its outputs.
    prepared_hooks: hook name of each ``Prepared`` field a model exposes, e.g.
      ``{"q": "hook_q_shear", "k": "hook_k_shear"}``.
    token_params: name of the per-token parameter module a model builds for the variant (the
      α projection of affine-scaled attention, ``"affine"``; see ``momentum_jax.nn``), or None.
    check_params: optional ``check_params(dims: AttentionDims, fixed: Mapping) -> None`` that
      raises ``ValueError`` / ``TypeError`` naming the argument for a bad fixed value; a model
      config calls it with the parameters it fixes (momentum's checks that γ is a finite real
      number >= 0, or one per kv head, and the boundary), so a bad value fails when the config
      is built instead of at the first forward pass.
    decoding: the variant's fast decoding form (:class:`Decoding`), or None: a model then
      decodes a causal variant by recomputing the layer's attention over the rows so far
      (``momentum_jax.nn.decoding``), exact but O(context) per new token.
    model_params: optional ``model_params(dims: AttentionDims) -> Mapping`` of the values a model
      passes for parameters its config does not fix, where the function's own default depends on
      the length of the call (sigmoid attention's b = −log S): a model passes the value for
      ``context_len`` instead, so training at any T and decoding with any cache length use the
      same value.
  """

  fn: Callable[..., object]
  reference: Callable[..., object]
  params: tuple[str, ...] = ()
  learned: Mapping[str, LearnedInit] = {}
  layouts: Mapping[str, LearnedLayout] = {}
  masking: Masking = "any"
  prepare: Prepare | None = None
  prepared_hooks: Mapping[str, str] = {}
  token_params: str | None = None
  check_params: CheckParams | None = None
  decoding: Decoding | None = None
  model_params: ModelParams | None = None

  @property
  def required_params(self) -> tuple[str, ...]:
    """The parameters a model config must fix, that is the keyword-only arguments of ``fn``
    without a default (``inspect.signature`` sees through a ``functools.partial``), less the
    learned ones, in signature order; e.g. ``("gamma",)`` for momentum attention."""
    return tuple(
        p.name for p in inspect.signature(self.fn).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name not in self.learned)


_REGISTRY: dict[str, AttentionVariant] = {}


def _check_variant(name: str, variant: AttentionVariant) -> None:
  unknown = sorted(set(variant.learned) - set(variant.params))
  if unknown:
    raise ValueError(
        f"learned parameters {unknown} of {name!r} are not in its params {variant.params}")
  undeclared = sorted(set(variant.required_params) - set(variant.params))
  if undeclared:
    raise ValueError(
        f"required arguments {undeclared} of {name!r} (keyword-only, without a default) are not "
        f"in its params {variant.params}")
  unlearned = sorted(set(variant.layouts) - set(variant.learned))
  if unlearned:
    raise ValueError(
        f"layouts {unlearned} of {name!r} are not learned parameters {sorted(variant.learned)}")
  if variant.decoding is not None and variant.masking == "bidirectional":
    raise ValueError(f"{name!r} is bidirectional only, so it cannot have a decoding form")
  if variant.masking not in MASKINGS:
    raise ValueError(f"masking of {name!r} must be one of {MASKINGS}, got {variant.masking!r}")
  fields = sorted(set(variant.prepared_hooks) - {"q", "k", "v"})
  if fields or (variant.prepared_hooks and variant.prepare is None):
    raise ValueError(
        f"prepared_hooks of {name!r} must map fields of 'q', 'k', 'v' of a prepare step, got "
        f"prepared_hooks={dict(variant.prepared_hooks)} and prepare={variant.prepare!r}")


def register_attention(name: str, variant: AttentionVariant) -> AttentionVariant:
  """Registers ``variant`` under ``name``; re-registering a taken name raises ``ValueError``."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"attention name must be a non-empty string, got {name!r}")
  _check_variant(name, variant)
  if name in _REGISTRY:
    raise ValueError(f"attention variant {name!r} is already registered")
  _REGISTRY[name] = variant
  return variant


def get_attention(name: str) -> AttentionVariant:
  """Returns the variant registered under ``name``; unknown names raise ``ValueError``."""
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise ValueError(
        f"unknown attention variant {name!r}; registered: {sorted(_REGISTRY)}"
    ) from None


def available_attention() -> tuple[str, ...]:
  """Names of all registered attention variants, sorted."""
  return tuple(sorted(_REGISTRY))
