"""MKOR: K-FAC-style preconditioning whose inverse factors follow rank-1 Sherman–Morrison updates.

Each registered dense kernel K [d_in, d_out] (y = x K + b) keeps two inverse Kronecker factors,
A⁻¹ [d_a, d_a] on the input side (d_a = d_in, or d_in + 1 when the layer has a bias) and
G⁻¹ [d_out, d_out] on the output side. They are updated in O(d²) from one vector each per batch,
the batch-mean input a and the batch-summed output gradient g, instead of being inverted in O(d³).

``layer_stats`` (the extra argument of ``update``) is a dict mapping the dotted path of each
registered kernel in the parameter tree (``"blocks.0.attn.q_proj.kernel"``; an NNX variable's
trailing ``.value`` is dropped) to a pair ``(a, g)``: ``a`` [d_in] the layer input averaged over
every batch/time axis and ``g`` [d_out] = Σ_tokens ∂L/∂y. ``momentum_jax.nn.DenseStats`` is such
a pair and ``momentum_jax.nn.value_grad_and_layer_stats`` returns the dict for a model built from
``momentum_jax.nn.Dense`` layers in the same forward/backward pass as the gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from momentum_jax.optim.checks import (
    check_count, check_finite, check_positive, check_unit_interval)

PreconditionFilter = Callable[[str, jax.Array], bool]


class MkorLayerState(NamedTuple):
  """Inverse factors of one dense layer.

  Attributes:
    a_inv: [d_a, d_a] float32 input-side inverse factor A⁻¹ (d_a = d_in, + 1 with a bias).
    g_inv: [d_out, d_out] float32 output-side inverse factor G⁻¹.
    reset_a: bool, reset A⁻¹ to the identity at the next factor update.
    reset_g: bool, reset G⁻¹ to the identity at the next factor update.
  """

  a_inv: jax.Array
  g_inv: jax.Array
  reset_a: jax.Array
  reset_g: jax.Array


class MkorState(NamedTuple):
  """State of ``mkor``.

  Attributes:
    count: int32 number of updates so far.
    layers: ``MkorLayerState`` per registered kernel, keyed by its dotted path.
    inner_state: state of the inner first-order optimizer.
  """

  count: jax.Array
  layers: dict[str, MkorLayerState]
  inner_state: optax.OptState


class MkorHState(NamedTuple):
  """State of ``mkor_h``.

  Attributes:
    mkor: the ``MkorState``.
    second_order: bool, preconditioning is still on (it never turns back on).
    window_loss_sum: float32 sum of the losses seen in the current window.
    window_len: int32 number of losses in the current window.
    prev_window_mean: float32 mean loss of the last completed window.
    has_prev: bool, a window has been completed.
  """

  mkor: MkorState
  second_order: jax.Array
  window_loss_sum: jax.Array
  window_len: jax.Array
  prev_window_mean: jax.Array
  has_prev: jax.Array


def param_path_name(path: jax.tree_util.KeyPath) -> str:
  """The dotted name of a parameter path, the key of ``layer_stats`` and ``MkorState.layers``.

  ``(DictKey("blocks"), DictKey(0), ..., DictKey("kernel"))`` -> ``"blocks.0....kernel"``; the
  trailing ``GetAttrKey("value")`` of an NNX variable leaf is dropped.
  """
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  return jax.tree_util.keystr(tuple(path), simple=True, separator=".")


def is_dense_kernel(name: str, leaf: jax.Array) -> bool:
  """Default ``precondition`` filter: every 2-D leaf whose name ends in ``kernel``."""
  return name.rsplit(".", 1)[-1] == "kernel" and jnp.ndim(leaf) == 2


def _named_leaves(tree: Any) -> dict[str, jax.Array]:
  return {param_path_name(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _bias_name(kernel_name: str, leaves: Mapping[str, jax.Array]) -> str | None:
  """The ``bias`` beside a ``kernel`` in ``leaves`` if it is a [d_out] vector, else None."""
  if not kernel_name.endswith("kernel"):
    return None
  name = kernel_name[:-len("kernel")] + "bias"
  bias = leaves.get(name)
  d_out = jnp.shape(leaves[kernel_name])[1]
  return name if bias is not None and jnp.shape(bias) == (d_out,) else None


def _sherman_morrison(f_inv: jax.Array, v: jax.Array, damping: float) -> jax.Array:
  """(P⁻¹ + v vᵀ)⁻¹ with P = (1 − damping) F⁻¹ + damping I, by Sherman–Morrison.

  Written with u = P v, so a symmetric F⁻¹ stays exactly symmetric.
  """
  p = (1.0 - damping) * f_inv + damping * jnp.eye(f_inv.shape[0], dtype=f_inv.dtype)
  u = p @ v
  return p - jnp.outer(u, u) / (1.0 + v @ u)


def _refresh_layer(layer: MkorLayerState, a: jax.Array, g: jax.Array, damping: float,
                   threshold: float) -> MkorLayerState:
  """One factor update of one layer, A⁻¹ then G⁻¹, with the reference's reset flags.

  A factor flagged for reset becomes the identity (and its flag clears); otherwise it takes a
  Sherman–Morrison step, and if any entry of the result exceeds ``threshold`` in magnitude (or is
  not finite) both factors of the layer are flagged. A⁻¹ is updated first, so a flag raised by A⁻¹
  resets G⁻¹ in the same update and A⁻¹ itself at the next one.
  """
  def step(f_inv, v, reset):
    stepped = _sherman_morrison(f_inv, v, damping)
    overflow = jnp.logical_and(~reset, ~(jnp.max(jnp.abs(stepped)) <= threshold))
    return jnp.where(reset, jnp.eye(f_inv.shape[0], dtype=f_inv.dtype), stepped), overflow

  a_inv, a_overflow = step(layer.a_inv, a, layer.reset_a)
  reset_g = jnp.logical_or(layer.reset_g, a_overflow)
  g_inv, g_overflow = step(layer.g_inv, g, reset_g)
  return MkorLayerState(a_inv=a_inv, g_inv=g_inv,
                        reset_a=jnp.logical_or(a_overflow, g_overflow), reset_g=g_overflow)


def _init_layers(
    params: optax.Params, is_selected: PreconditionFilter
) -> dict[str, MkorLayerState]:
  """Identity factors, flagged for reset, for every selected kernel of ``params``."""
  leaves = _named_leaves(params)
  layers = {}
  for name, leaf in leaves.items():
    if not is_selected(name, leaf):
      continue
    if jnp.ndim(leaf) != 2:
      raise ValueError(f"precondition selected {name!r} with shape {jnp.shape(leaf)}; "
                       "MKOR preconditions 2-D [d_in, d_out] kernels only")
    d_in, d_out = jnp.shape(leaf)
    d_a = d_in + (_bias_name(name, leaves) is not None)
    layers[name] = MkorLayerState(
        a_inv=jnp.eye(d_a, dtype=jnp.float32), g_inv=jnp.eye(d_out, dtype=jnp.float32),
        reset_a=jnp.array(True), reset_g=jnp.array(True))
  return layers


def _statistics(
    layers: Mapping[str, MkorLayerState], leaves: Mapping[str, jax.Array],
    layer_stats: Mapping[str, tuple[jax.Array, jax.Array]], clipping: float,
) -> dict[str, tuple[jax.Array, jax.Array]]:
  """Clipped (a, g) per registered layer, with the bias 1 appended to a."""
  missing = sorted(set(layers) - set(layer_stats))
  if missing:
    raise ValueError(f"layer_stats has no entry for the registered kernels {missing}; "
                     f"it has {sorted(layer_stats)}")
  vectors = {}
  for name, layer in layers.items():
    a, g = (jnp.asarray(x, jnp.float32) for x in layer_stats[name])
    d_in, d_out = jnp.shape(leaves[name])
    if a.shape != (d_in,) or g.shape != (d_out,):
      raise ValueError(f"layer_stats[{name!r}] has shapes a={a.shape}, g={g.shape}; the "
                       f"kernel's shape {(d_in, d_out)} needs a=({d_in},), g=({d_out},)")
    if layer.a_inv.shape[0] == d_in + 1:
      a = jnp.concatenate([a, jnp.ones((1,), jnp.float32)])
    vectors[name] = (jnp.clip(a, -clipping, clipping), jnp.clip(g, -clipping, clipping))
  return vectors


def _precondition_layer(
    layer: MkorLayerState, kernel_grad: jax.Array, bias_grad: jax.Array | None, rescale: bool
) -> tuple[jax.Array, jax.Array | None]:
  """(Δ_K, Δ_b) for one layer, or the raw gradients if the result is not finite."""
  m = kernel_grad.astype(jnp.float32)
  if bias_grad is not None:
    m = jnp.concatenate([m, bias_grad.astype(jnp.float32)[None]], axis=0)
  delta = layer.a_inv @ m @ layer.g_inv
  if rescale:
    d_in = kernel_grad.shape[0]
    grad_norm = jnp.linalg.norm(m[:d_in]) + jnp.linalg.norm(m[d_in:])
    delta_norm = jnp.linalg.norm(delta[:d_in]) + jnp.linalg.norm(delta[d_in:])
    delta = delta * (grad_norm / delta_norm)
  out = jnp.where(jnp.all(jnp.isfinite(delta)), delta, m)
  new_kernel = out[:kernel_grad.shape[0]].astype(kernel_grad.dtype)
  new_bias = None if bias_grad is None else out[-1].astype(bias_grad.dtype)
  return new_kernel, new_bias


def _precondition(
    updates: optax.Updates, layers: dict[str, MkorLayerState],
    layer_stats: Mapping[str, tuple[jax.Array, jax.Array]], refresh: jax.Array, *,
    clipping: float, damping: float, stabilizer_threshold: float, rescale: bool,
) -> tuple[optax.Updates, dict[str, MkorLayerState]]:
  """Steps 1-3 of :func:`mkor`: the factor update when ``refresh``, then the preconditioning.

  Returns the preconditioned ``updates`` (other leaves unchanged) and the new factors.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(updates)
  names = [param_path_name(path) for path, _ in flat]
  leaves = dict(zip(names, (leaf for _, leaf in flat)))
  vectors = _statistics(layers, leaves, layer_stats, clipping)
  layers = jax.lax.cond(
      refresh,
      lambda layers: {name: _refresh_layer(layer, *vectors[name], damping, stabilizer_threshold)
                      for name, layer in layers.items()},
      lambda layers: layers,
      layers)
  for name, layer in layers.items():
    bias = _bias_name(name, leaves) if layer.a_inv.shape[0] != leaves[name].shape[0] else None
    leaves[name], bias_update = _precondition_layer(
        layer, leaves[name], None if bias is None else leaves[bias], rescale)
    if bias is not None:
      leaves[bias] = bias_update
  return jax.tree_util.tree_unflatten(treedef, [leaves[name] for name in names]), layers


def mkor(
    inner: optax.GradientTransformation,
    *,
    inv_freq: int = 10,
    clipping: float = 100.0,
    stabilizer_threshold: float = 2.0,
    damping: float = 0.05,
    rescale: bool = True,
    warmup_steps: int = 0,
    precondition: PreconditionFilter | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""MKOR: rank-1 K-FAC preconditioning of dense-layer gradients, then an inner optimizer.

  For each registered kernel K [d_in, d_out] with gradient ∇K (and bias gradient ∇b when a
  ``bias`` [d_out] sits beside it, stacked as a last input row: M = [∇K; ∇bᵀ], else M = ∇K):

  1. Factor update, at steps t with t mod ``inv_freq`` = 0 or t < ``warmup_steps`` (t counts
     from 0, so the first update happens at the first step). With the clipped statistics
     a = clip(a_mean (, 1), ±c) and g = clip(g_sum, ±c), c = ``clipping``, and ρ = ``damping``,
     for F⁻¹ ∈ {A⁻¹ with v = a, G⁻¹ with v = g}:

        P = (1 − ρ) F⁻¹ + ρ I,      F⁻¹ ← P − P v vᵀ P / (1 + vᵀ P v)   (= (P⁻¹ + v vᵀ)⁻¹),

     or F⁻¹ ← I if the factor is flagged for reset. Stabiliser: when a Sherman–Morrison step
     leaves max|F⁻¹| > ``stabilizer_threshold``, both factors of that layer are flagged; A⁻¹ is
     updated before G⁻¹, so the flag resets G⁻¹ at once and A⁻¹ at the next factor update. Both
     factors start flagged, i.e. the first factor update sets them to I.
  2. Preconditioning, every step: Δ = A⁻¹ M G⁻¹ (the transpose of the reference's
     G⁻¹ ∇W A⁻¹ for torch's W = Kᵀ; the factors are symmetric).
  3. Rescale (``rescale=True``): Δ ← Δ · (‖∇K‖ + ‖∇b‖) / (‖Δ_K‖ + ‖Δ_b‖), so the layer's step
     keeps the size of its gradient. If the result has a NaN or ±inf entry (e.g. a zero gradient
     gives 0/0) the layer uses its raw gradient M this step.
  4. The preconditioned tree (other leaves unchanged) goes to ``inner``.

  Without ``layer_stats`` an update is exactly ``inner``'s update (the factors are neither
  updated nor applied; the step count advances), so an MKOR that is never given statistics is
  its inner optimizer, and runs anywhere a plain optax transform runs. Other extra arguments are
  forwarded to ``inner``.

  NaN handling: a layer whose preconditioned step is not finite falls back to its raw gradient,
  so NaN/inf gradients reach ``inner`` as they are and corrupt its state (momentum, moments). A
  non-finite factor (from non-finite statistics) is flagged for reset like an overflowing one;
  until the next factor update its layer falls back to raw gradients. To skip non-finite steps
  entirely, leaving the factors and the inner state untouched, wrap the whole transform:
  ``optax.apply_if_finite(mkor(inner), max_consecutive_errors=5)`` (it checks the gradients,
  not ``layer_stats``, and forwards ``layer_stats`` to MKOR).

  Differences from the reference implementation: the statistics are clamped after the batch
  reduction (the reference clamps each token's input and N-scaled output gradient before
  averaging; the results agree when no token exceeds ``clipping``); factors are float32 (the
  reference defaults to float16); a non-finite factor is flagged for reset (the reference's
  ``max > 2`` test is false for NaN, so a NaN factor would persist). Starting from I, F⁻¹ stays
  in (0, I] in exact arithmetic for damping in [0, 1], so the stabiliser only catches numerical
  breakdown. Under ``optax.MultiSteps`` the statistics of the last micro-batch are used.

  Per step this costs O(d_a² d_out + d_a d_out²) per layer for the preconditioning and, at a
  factor update, O(d_a² + d_out²) for the factors; the state holds d_a² + d_out² float32 per
  layer. Exclude large layers (e.g. a vocabulary-sized output projection) with ``precondition``.

  Args:
    inner: the first-order optimizer applied to the preconditioned gradients, e.g.
      ``optax.sgd(lr, momentum=0.9)``, ``optax.adam(lr)``, ``optax.lamb(lr)``.
    inv_freq: factor-update period in steps, >= 1.
    clipping: statistics are clamped to [−clipping, clipping], > 0.
    stabilizer_threshold: reset the layer's factors when max|F⁻¹| exceeds it, > 0.
    damping: weight ρ of the identity mixed into F⁻¹ before each rank-1 update, in [0, 1].
    rescale: rescale each preconditioned gradient to the norm of the raw one.
    warmup_steps: update the factors at every step while the count is below this, >= 0.
    precondition: ``precondition(name, leaf) -> bool`` selects the dense kernels among the
      parameters by dotted name (see the module docstring) and leaf; default: every 2-D leaf
      named ``...kernel``. Every selected kernel needs an entry in ``layer_stats``; other leaves
      pass to ``inner`` unchanged.

  Returns:
    A ``GradientTransformationExtraArgs`` whose ``update(updates, state, params=None, *,
    layer_stats=None, **extra_args)`` takes ``layer_stats: dict[str, (a, g)]`` as described in
    the module docstring (entries for unregistered names are ignored).

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from flax import nnx
    >>> from momentum_jax.nn import Transformer, TransformerConfig, value_grad_and_layer_stats
    >>> cfg = TransformerConfig(vocab_size=16, context_len=8, d_model=16, num_heads=2,
    ...                         mlp_dim=32)
    >>> model = Transformer(cfg, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, mkor(optax.sgd(0.1, momentum=0.9)), wrt=nnx.Param)
    >>> tokens = jnp.arange(16).reshape(2, 8) % 5
    >>> def loss_fn(model):
    ...   logits = model(tokens)[:, :-1]
    ...   return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    >>> @nnx.jit
    ... def train_step(model, optimizer):
    ...   loss, grads, layer_stats = value_grad_and_layer_stats(loss_fn, model)
    ...   optimizer.update(model, grads, layer_stats=layer_stats)
    ...   return loss
    >>> losses = [float(train_step(model, optimizer)) for _ in range(5)]
    >>> losses[-1] < losses[0]
    True

  References:
    Mozaffari, Li, Dehnavi, "MKOR: Momentum-Enabled Kronecker-Factor-Based Optimizer Using
    Rank-1 Updates", NeurIPS 2023, arXiv:2306.01685.
  """
  check_count("inv_freq", inv_freq, 1)
  check_positive("clipping", clipping)
  check_positive("stabilizer_threshold", stabilizer_threshold)
  check_unit_interval("damping", damping)
  check_count("warmup_steps", warmup_steps, 0)
  inner = optax.with_extra_args_support(inner)
  is_selected = is_dense_kernel if precondition is None else precondition

  def init_fn(params: optax.Params) -> MkorState:
    return MkorState(count=jnp.zeros([], jnp.int32), layers=_init_layers(params, is_selected),
                     inner_state=inner.init(params))

  def update_fn(updates, state, params=None, *, layer_stats=None, **extra_args):
    layers = state.layers
    if layer_stats is not None:
      refresh = jnp.logical_or(state.count % inv_freq == 0, state.count < warmup_steps)
      updates, layers = _precondition(
          updates, layers, layer_stats, refresh, clipping=clipping, damping=damping,
          stabilizer_threshold=stabilizer_threshold, rescale=rescale)
    updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    return updates, MkorState(count=optax.safe_increment(state.count), layers=layers,
                              inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _record_loss(
    state: MkorHState, mkor_state: MkorState, value: jax.Array, window: int,
    min_improvement: float,
) -> MkorHState:
  """The next :class:`MkorHState` after the loss ``value``; see :func:`mkor_h` for the rule."""
  loss_sum = state.window_loss_sum + jnp.asarray(value, jnp.float32)
  length = state.window_len + 1
  closes = length >= window
  mean = loss_sum / length
  improvement = ((state.prev_window_mean - mean)
                 / jnp.maximum(jnp.abs(state.prev_window_mean), jnp.finfo(jnp.float32).tiny))
  stalled = closes & state.has_prev & ~(improvement >= min_improvement)
  return MkorHState(
      mkor=mkor_state,
      second_order=state.second_order & ~stalled,
      window_loss_sum=jnp.where(closes, 0.0, loss_sum),
      window_len=jnp.where(closes, 0, length),
      prev_window_mean=jnp.where(closes, mean, state.prev_window_mean),
      has_prev=state.has_prev | closes)


def mkor_h(
    inner: optax.GradientTransformation,
    *,
    window: int = 100,
    min_improvement: float = 0.01,
    inv_freq: int = 10,
    clipping: float = 100.0,
    stabilizer_threshold: float = 2.0,
    damping: float = 0.05,
    rescale: bool = True,
    warmup_steps: int = 0,
    precondition: PreconditionFilter | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""MKOR-H: MKOR that falls back to ``inner`` for good once the loss stops improving enough.

  The paper's hybrid switches from second- to first-order updates when the second-order steps
  stop paying for themselves, but no rule was released; this one is ours. The loss comes in as
  the ``value`` extra argument (optax's name for the objective, as in
  ``optax.contrib.reduce_on_plateau``). Losses are averaged over consecutive windows of
  ``window`` steps; at the end of window k (k ≥ 2), with means L̄_{k−1}, L̄_k,

      ``r_k = (L̄_{k−1} − L̄_k) / |L̄_{k−1}|``,

  and if r_k < ``min_improvement`` (or r_k is NaN, e.g. from a NaN loss) preconditioning is
  switched off permanently from the next step: every later update is exactly ``inner``'s, and the
  factor updates and preconditioning are no longer computed (``lax.cond``), though their memory
  stays allocated. ``MkorHState.second_order`` tells whether it is still on.

  The threshold is on the relative improvement per window, not per step, so it does not depend on
  the loss scale; the defaults (1 % per 100 steps) are a starting point, not tuned values. With
  ``layer_stats`` but no ``value`` the update raises ``ValueError``; with neither it is an
  ``inner`` update that leaves the windows untouched, as in ``mkor``.

  Args:
    inner: the first-order optimizer (see ``mkor``).
    window: steps per loss window, >= 1.
    min_improvement: smallest relative window-to-window loss decrease that keeps
      preconditioning on, finite.
    inv_freq, clipping, stabilizer_threshold, damping, rescale, warmup_steps, precondition: as
      in ``mkor``.

  Returns:
    A ``GradientTransformationExtraArgs`` with ``update(updates, state, params=None, *,
    layer_stats=None, value=None, **extra_args)``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> params = {"dense": {"kernel": jnp.ones((3, 2))}}
    >>> tx = mkor_h(optax.sgd(0.1), window=2, min_improvement=0.5)
    >>> state = tx.init(params)
    >>> stats = {"dense.kernel": (jnp.ones(3), jnp.ones(2))}
    >>> for loss in [4.0, 4.0, 3.9, 3.9]:  # window means 4.0 then 3.9: 2.5 % < 50 %
    ...   _, state = tx.update(params, state, params, layer_stats=stats, value=jnp.array(loss))
    >>> bool(state.second_order)
    False

  References:
    Mozaffari, Li, Dehnavi, "MKOR: Momentum-Enabled Kronecker-Factor-Based Optimizer Using
    Rank-1 Updates", NeurIPS 2023, arXiv:2306.01685 (MKOR-H, the hybrid variant).
  """
  check_count("window", window, 1)
  check_finite("min_improvement", min_improvement)
  base = mkor(inner, inv_freq=inv_freq, clipping=clipping,
              stabilizer_threshold=stabilizer_threshold, damping=damping, rescale=rescale,
              warmup_steps=warmup_steps, precondition=precondition)

  def init_fn(params: optax.Params) -> MkorHState:
    return MkorHState(mkor=base.init(params), second_order=jnp.array(True),
                      window_loss_sum=jnp.zeros([], jnp.float32),
                      window_len=jnp.zeros([], jnp.int32),
                      prev_window_mean=jnp.zeros([], jnp.float32), has_prev=jnp.array(False))

  def update_fn(updates, state, params=None, *, layer_stats=None, value=None, **extra_args):
    if value is not None:
      extra_args = {**extra_args, "value": value}
    if layer_stats is None:
      updates, mkor_state = base.update(updates, state.mkor, params, **extra_args)
    elif value is None:
      raise ValueError("mkor_h needs the loss to decide when to stop preconditioning: pass "
                       "update(..., layer_stats=..., value=loss)")
    else:
      updates, mkor_state = jax.lax.cond(
          state.second_order,
          lambda: base.update(updates, state.mkor, params, layer_stats=layer_stats,
                              **extra_args),
          lambda: base.update(updates, state.mkor, params, **extra_args))
    if value is None:
      return updates, state._replace(mkor=mkor_state)

    return updates, _record_loss(state, mkor_state, value, window, min_improvement)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def mkor_adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    weight_decay: float = 0.0,
    *,
    inv_freq: int = 10,
    clipping: float = 100.0,
    stabilizer_threshold: float = 2.0,
    damping: float = 0.05,
    rescale: bool = True,
    warmup_steps: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """MKOR preconditioning in front of AdamW: ``mkor(optax.adamw(learning_rate, b1, b2,
  weight_decay=weight_decay), ...)``, the optimizer a trainer names ``"mkor"``.

  Takes ``layer_stats`` through ``update`` as :func:`mkor` does (from
  ``momentum_jax.nn.value_grad_and_layer_stats``); the other arguments are those of
  :func:`mkor` and ``optax.adamw``.

  Example:
    >>> import jax.numpy as jnp
    >>> from momentum_jax.optim import mkor_adamw
    >>> params = {"w": jnp.ones((3, 2))}
    >>> tx = mkor_adamw(1e-2, weight_decay=0.1)
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.full((3, 2), 0.5)}, state, params)
    >>> updates["w"].shape
    (3, 2)

  References:
    Mozaffari, Li, Dehnavi, "MKOR: Momentum-Enabled Kronecker-Factor-Based Optimizer Using
    Rank-1 Updates", NeurIPS 2023, arXiv:2306.01685.
  """
  return mkor(optax.adamw(learning_rate, b1, b2, weight_decay=weight_decay), inv_freq=inv_freq,
              clipping=clipping, stabilizer_threshold=stabilizer_threshold, damping=damping,
              rescale=rescale, warmup_steps=warmup_steps)
