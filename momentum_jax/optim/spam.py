"""SPAM: spike-aware Adam with momentum reset (Huang et al., ICLR 2025).

The transform reproduces the authors' reference implementation (``TianjinYellow/SPAM-Optimizer``,
``galore_torch/SPAM.py``) step for step; :func:`spam` lists the few places where we differ and why.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from momentum_jax.optim.checks import (
    check, check_beta, check_count, check_non_negative, check_positive, check_rate, concrete)
from momentum_jax.optim.numerics import after, float_dtype

# The post-reset warmup starts at 1 - _WARMUP_DROP = 0.01, as in the reference.
_WARMUP_DROP = 0.99


def warmup_scale(t: jax.Array, warmup_steps: int | jax.Array) -> jax.Array:
  r"""Post-reset cosine warmup factor of SPAM.

  .. math::
    s(t) = 1 - 0.99 \cdot \tfrac12 \bigl(1 + \cos(\pi t / (N + 1))\bigr) \quad (t < N),
    \qquad s(t) = 1 \quad (t \ge N),

  where ``t`` counts steps since the last momentum reset and ``N = warmup_steps``.

  Args:
    t: steps since the last reset (0 on the reset step itself).
    warmup_steps: ``N``, the warmup length.

  Returns:
    ``s(t)`` in the default float dtype.

  Example:
    >>> from momentum_jax.optim.spam import warmup_scale
    >>> print(f"{float(warmup_scale(0, 150)):.4f} {float(warmup_scale(150, 150)):.4f}")
    0.0100 1.0000

  References:
    Huang et al., "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training", ICLR 2025,
    arXiv:2501.06842.
  """
  t = jnp.asarray(t, float_dtype())
  n = jnp.asarray(warmup_steps, float_dtype())
  ramp = 1.0 - _WARMUP_DROP * 0.5 * (1.0 + jnp.cos(jnp.pi * t / (n + 1.0)))
  return jnp.where(t < n, ramp, 1.0)


class ScaleBySpamState(NamedTuple):
  """State of :func:`scale_by_spam`.

  Attributes:
    count: number of steps taken so far (the reference's ``total_step``).
    mu: first moments.
    nu: second moments.
    masks: sparse mode only (``None`` when dense): per leaf, a boolean array marking the entries
      that keep moments and get updates (2-D leaves) or a scalar ``True`` (other leaves).
    key: sparse mode only (``None`` when dense): PRNG key for the next mask redraw.
  """
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  masks: optax.Updates | None
  key: jax.Array | None


def _initial_mask(key: jax.Array, shape: tuple[int, int], density: Any) -> jax.Array:
  """Exactly ``floor(density * size)`` entries set, at random (as the reference's first mask)."""
  size = shape[0] * shape[1]
  kept = jnp.floor(density * size).astype(jnp.int32)
  order = jax.random.permutation(key, size)
  return jnp.zeros(size, bool).at[order].set(jnp.arange(size) < kept).reshape(shape)


def _redrawn_mask(key: jax.Array, shape: tuple[int, ...], density: Any) -> jax.Array:
  """Each entry kept independently with probability ``density`` (as the reference's redraw)."""
  return jax.random.bernoulli(key, density, shape)


def _is_sparse_leaf(x: jax.Array) -> bool:
  return x.ndim == 2


def _init_masks(
    params: optax.Params, density: Any, key: jax.Array | None
) -> tuple[optax.Updates, jax.Array]:
  """Sparse mode's first mask of every leaf, and the PRNG key of the next redraw."""
  base_key = jax.random.PRNGKey(0) if key is None else key
  next_key, init_key = jax.random.split(base_key)
  leaves, treedef = jax.tree.flatten(params)
  leaf_keys = jax.random.split(init_key, max(len(leaves), 1))
  masks = treedef.unflatten([
      _initial_mask(k, p.shape, density) if _is_sparse_leaf(p) else jnp.ones((), bool)
      for k, p in zip(leaf_keys, leaves)
  ])
  return masks, next_key


def _redraw_masks(
    masks: optax.Updates, key: jax.Array, density: Any
) -> tuple[optax.Updates, jax.Array]:
  """New masks of the 2-D leaves at a reset (other leaves keep theirs), and the next key."""
  key, draw_key = jax.random.split(key)
  leaves, treedef = jax.tree.flatten(masks)
  leaf_keys = jax.random.split(draw_key, max(len(leaves), 1))
  new = [_redrawn_mask(k, m.shape, density) if m.ndim == 2 else m
         for k, m in zip(leaf_keys, leaves)]
  return treedef.unflatten(new), key


def _step_schedule(
    k: jax.Array, b1: Any, b2: Any, reset_interval: Any, warmup_steps: Any, grad_accu_steps: Any,
    reset_count_on_reset: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """SPAM's per-step scalars at the 1-indexed step ``k``: ``(reset, restart, clip_on, factor)``.

  ``reset`` zeroes the moments, ``restart`` restarts the warmup and redraws the sparse masks,
  ``clip_on`` enables spike clipping, and ``factor`` is the warmup times the bias correction.
  """
  phase = k % reset_interval
  reset = phase == 0
  # The reference restarts the warmup (and redraws masks) after step k - 1, so never before k = 1.
  restart = reset & (k >= 2)
  clip_on = (k >= grad_accu_steps) & (phase >= grad_accu_steps)
  t = jnp.where(k - phase >= 2, phase, warmup_steps + 1)
  c = jnp.where(k >= reset_interval, phase + 1, k) if reset_count_on_reset else k
  c = jnp.asarray(c, float_dtype())
  factor = warmup_scale(t, warmup_steps) * jnp.sqrt(1.0 - b2**c) / (1.0 - b1**c)
  return reset, restart, clip_on, factor


def _leaf_update(
    g: jax.Array, m: jax.Array, v: jax.Array, keep: jax.Array | None = None, *, k: jax.Array,
    reset: jax.Array, clip_on: jax.Array, factor: jax.Array, b1: Any, b2: Any, eps: Any,
    threshold: Any, mu_dtype: Any | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One leaf's SPAM step: ``(update, new first moment, new second moment)``."""
  m = jnp.where(reset, jnp.zeros_like(m), m)
  v = jnp.where(reset, jnp.zeros_like(v), v)
  spike = clip_on & (g * g > threshold * v)
  clipped = jnp.where(spike, jnp.sign(g) * jnp.sqrt(threshold * v), g)
  m = b1 * m + (1.0 - b1) * clipped
  # A clipped entry squares to threshold * v: no square root in the second moment, so the
  # square root above is only computed where m is, and not materialised for both.
  v = b2 * v + (1.0 - b2) * jnp.where(spike, threshold * v, g * g)
  # Old v is read by the first moment above: overwrite it only after that (see `after`).
  v = after(v, m, k > 0)
  u = m / (jnp.sqrt(v) + eps) * factor
  if keep is not None:
    m, v, u = (jnp.where(keep, x, jnp.zeros_like(x)) for x in (m, v, u))
  mu_type = g.dtype if mu_dtype is None else mu_dtype
  return u.astype(g.dtype), m.astype(mu_type), v.astype(g.dtype)


def scale_by_spam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    threshold: float = 5000.0,
    reset_interval: int = 500,
    warmup_steps: int = 150,
    grad_accu_steps: int = 20,
    density: float = 1.0,
    key: jax.Array | None = None,
    reset_count_on_reset: bool = False,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
  r"""The gradient transformation of :func:`spam`; see it for the update rule.

  It returns SPAM's step :math:`u`, before the learning rate and the weight decay.

  Args:
    b1, b2, eps, threshold, reset_interval, warmup_steps: as in :func:`spam`.
    grad_accu_steps, density, key, reset_count_on_reset, mu_dtype: as in :func:`spam`.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a :class:`ScaleBySpamState`.

  Raises:
    ValueError: a concrete hyper-parameter out of range (the message names it).

  Example:
    >>> import jax.numpy as jnp
    >>> from momentum_jax.optim import scale_by_spam
    >>> tx = scale_by_spam(reset_interval=7, warmup_steps=3, grad_accu_steps=2)
    >>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state)
    >>> print(updates["w"].shape, int(state.count))
    (2, 3) 1

  References:
    See :func:`spam`.
  """
  check_beta("b1", b1)
  check_beta("b2", b2)
  check_non_negative("eps", eps)
  check_positive("threshold", threshold)
  check_count("reset_interval", reset_interval, 1)
  check_count("warmup_steps", warmup_steps, 0)
  check_count("grad_accu_steps", grad_accu_steps, 0)
  check("density", density, lambda v: 0.0 < v <= 1.0, "in (0, 1]")
  mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)

  def init_fn(params: optax.Params) -> ScaleBySpamState:
    mu = jax.tree.map(
        lambda p: jnp.zeros_like(p, dtype=p.dtype if mu_dtype is None else mu_dtype), params)
    nu = jax.tree.map(jnp.zeros_like, params)
    masks, next_key = None, None
    if concrete("density", density) != 1.0:
      masks, next_key = _init_masks(params, density, key)
    return ScaleBySpamState(
        count=jnp.zeros([], jnp.int32), mu=mu, nu=nu, masks=masks, key=next_key)

  def update_fn(
      updates: optax.Updates, state: ScaleBySpamState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, ScaleBySpamState]:
    del params
    k = optax.safe_increment(state.count)
    reset, restart, clip_on, factor = _step_schedule(
        k, b1, b2, reset_interval, warmup_steps, grad_accu_steps, reset_count_on_reset)
    masks, key = state.masks, state.key
    if masks is not None:
      redraw = functools.partial(_redraw_masks, density=density)
      masks, key = jax.lax.cond(restart, redraw, lambda m, r: (m, r), masks, key)
    leaf = functools.partial(
        _leaf_update, k=k, reset=reset, clip_on=clip_on, factor=factor, b1=b1, b2=b2, eps=eps,
        threshold=threshold, mu_dtype=mu_dtype)
    trees = (updates, state.mu, state.nu) + (() if masks is None else (masks,))
    out = jax.tree.map(leaf, *trees)
    u, mu, nu = jax.tree.transpose(
        jax.tree.structure(updates), jax.tree.structure((0, 0, 0)), out)
    return u, ScaleBySpamState(count=k, mu=mu, nu=nu, masks=masks, key=key)

  return optax.GradientTransformation(init_fn, update_fn)


class DecayAfterUpdateState(NamedTuple):
  """State of the post-update weight decay in :func:`spam`: steps taken, for a schedule."""
  count: jax.Array


def _decay_after_update(
    weight_decay: Any, learning_rate: optax.ScalarOrSchedule, density: Any
) -> optax.GradientTransformation:
  """Decoupled weight decay of the already-updated parameters: ``p <- (p + u)(1 - lr * wd)``.

  Placed after ``scale_by_learning_rate`` (``u`` is the signed step). 2-D leaves get no decay when
  ``density < 1``: the reference's decay of sparse parameters writes to a copy and has no effect.
  """

  def init_fn(params: optax.Params) -> DecayAfterUpdateState:
    del params
    return DecayAfterUpdateState(count=jnp.zeros([], jnp.int32))

  def update_fn(
      updates: optax.Updates, state: DecayAfterUpdateState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, DecayAfterUpdateState]:
    if params is None:
      raise ValueError("spam's weight decay needs the parameters: update(updates, state, params)")
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    rate = lr * weight_decay

    def leaf(u, p):
      r = jnp.where(density < 1.0, 0.0, rate) if _is_sparse_leaf(p) else rate
      return (u - r * (p + u)).astype(u.dtype)

    updates = jax.tree.map(leaf, updates, params)
    return updates, DecayAfterUpdateState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def spam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    threshold: float = 5000.0,
    reset_interval: int = 500,
    warmup_steps: int = 150,
    grad_accu_steps: int = 20,
    density: float = 1.0,
    key: jax.Array | None = None,
    reset_count_on_reset: bool = False,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
  r"""SPAM optimizer: spike-aware Adam with momentum reset and decoupled weight decay.

  With :math:`k` the 1-indexed step, :math:`\Delta T` = ``reset_interval``, :math:`N` =
  ``warmup_steps``, :math:`\theta` = ``threshold``, :math:`A` = ``grad_accu_steps`` and
  :math:`\eta` the learning rate at this step, each entry is updated by

  .. math::
    m, v &\leftarrow 0, 0 \quad \text{if } k \bmod \Delta T = 0 \\
    g &\leftarrow \operatorname{sign}(g) \sqrt{\theta v} \quad \text{where } g^2 > \theta v,
      \text{ if } k \ge A \text{ and } (k \bmod \Delta T) \ge A \\
    m &\leftarrow \beta_1 m + (1 - \beta_1) g, \qquad v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
    u &= s(t) \, \frac{\sqrt{1 - \beta_2^{c}}}{1 - \beta_1^{c}} \, \frac{m}{\sqrt{v} + \epsilon} \\
    p &\leftarrow (p - \eta u)(1 - \eta \lambda).

  Clipping uses the raw gradient and ``v`` from before this step (after a reset, if any), not bias
  corrected. :math:`t` counts steps since the last reset (:func:`warmup_scale` gives :math:`s`);
  the first interval has no warmup (:math:`s = 1`). :math:`c` is the bias-correction count: the
  total step count :math:`k`, which the reference never resets, or the steps since the last reset
  (the reset step counting as 1) when ``reset_count_on_reset`` is set. ``eps`` is added outside
  the square root. :func:`scale_by_spam` computes :math:`u`.

  Weight decay :math:`\lambda` acts on the already-updated parameters and is not warmed up, as in
  the reference (this is not optax's ``add_decayed_weights`` order, which would decay ``p`` before
  the step).

  Sparse momentum (``density < 1``): every 2-D leaf keeps moments, and gets updates, only on a
  random subset of its entries; other leaves stay dense. The first mask has exactly
  ``floor(density * size)`` entries; at each reset a new mask is drawn entry by entry with
  probability ``density``, both as in the reference. Masked-out moments are held at zero, so this
  option changes the update but does not save memory here. The 2-D leaves get no weight decay,
  again as in the reference, whose decay of sparse parameters has no effect. Whether the state
  holds masks is fixed at ``init``: it does unless ``density`` is concretely 1 (a jitted ``init``
  of ``optax.inject_hyperparams(spam)`` sees a traced ``density`` and keeps all-true masks; list
  ``density`` in ``static_args`` to avoid that).

  Differences from the reference, all deliberate: ``warmup_steps`` defaults to the paper's 150 (the
  reference's first release had 50, and its training script passes the learning-rate warmup length
  here); sparse mode applies to every 2-D leaf (the reference applies it to a user-chosen parameter
  group: use :func:`optax.partition` for that); masks come from a JAX PRNG key, so they differ
  from torch's draws.

  NaN or inf gradients: a NaN propagates into ``m``, ``v`` and the update, like Adam (a later reset
  zeroes the moments, but the parameters are already corrupted). An inf entry is clipped to a
  finite value on steps where clipping is active and gives a NaN update otherwise. Compose with
  :func:`optax.apply_if_finite` to skip such steps, leaving parameters and state untouched:

    >>> import jax.numpy as jnp
    >>> import optax
    >>> from momentum_jax.optim import spam
    >>> tx = optax.apply_if_finite(spam(1e-3), max_consecutive_errors=5)
    >>> params = {"w": jnp.ones((2, 2))}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.full((2, 2), jnp.nan)}, state, params)
    >>> print(float(jnp.abs(updates["w"]).sum()), int(state.notfinite_count))
    0.0 1

  Args:
    learning_rate: :math:`\eta`, a constant or an optax schedule of the step count.
    b1: decay of the first moment.
    b2: decay of the second moment.
    eps: added to :math:`\sqrt{v}` in the denominator.
    weight_decay: :math:`\lambda`, decoupled weight decay.
    threshold: :math:`\theta`, the spike threshold relative to :math:`v`.
    reset_interval: :math:`\Delta T`, momentum-reset period in steps.
    warmup_steps: :math:`N`, length of the cosine warmup after each reset. The reference's first
      release defaulted to 50; we use the paper's 150.
    grad_accu_steps: :math:`A`, steps after the start of training and after each reset during
      which no clipping happens (``v`` is still being accumulated).
    density: fraction of the entries of 2-D leaves that keep moments; 1 is dense Adam-like SPAM.
    key: PRNG key for the sparse masks; ``jax.random.PRNGKey(0)`` when ``None``. Unused if dense.
    reset_count_on_reset: restart the bias-correction count at each reset. Off by default, as in
      the reference; with it on, the first steps after a reset get Adam's full bias correction.
    mu_dtype: dtype of the first moment; the gradient's dtype when ``None``.

  Returns:
    ``optax.chain(scale_by_spam(...), scale_by_learning_rate(learning_rate), <post-update decay>)``.
    Under :func:`optax.inject_hyperparams` every numeric argument may be traced: ``learning_rate``,
    ``b1``, ``b2``, ``eps``, ``weight_decay``, ``threshold``, and also the integer periods and
    ``density`` (whose sparse/dense state layout is fixed at ``init``); arguments are only
    validated when concrete.

  Raises:
    ValueError: a concrete hyper-parameter out of range (the message names it).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from momentum_jax.optim import spam
    >>> loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
    >>> tx = spam(0.1, reset_interval=50, warmup_steps=10, grad_accu_steps=5)
    >>> params = {"w": jnp.zeros(3)}
    >>> state = tx.init(params)
    >>> for _ in range(200):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(bool(loss(params) < 1e-2))
    True

  References:
    Huang et al., "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training", ICLR 2025,
    arXiv:2501.06842. Reference code: https://github.com/TianjinYellow/SPAM-Optimizer.
  """
  check_rate("learning_rate", learning_rate)
  check_non_negative("weight_decay", weight_decay)
  return optax.chain(
      scale_by_spam(
          b1=b1, b2=b2, eps=eps, threshold=threshold, reset_interval=reset_interval,
          warmup_steps=warmup_steps, grad_accu_steps=grad_accu_steps, density=density, key=key,
          reset_count_on_reset=reset_count_on_reset, mu_dtype=mu_dtype),
      optax.scale_by_learning_rate(learning_rate),
      _decay_after_update(weight_decay, learning_rate, density),
  )
