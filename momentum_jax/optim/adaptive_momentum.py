r"""Adaptive memory momentum: AM-SGD and AM-AdamW.

Topollai & Choromanska replace the constant momentum coefficient by one chosen at every step
from a two-plane proximal model of the loss. One coefficient :math:`\beta_t` is shared by the
whole model: every inner product below runs over all parameter leaves.

Derivation
----------
Write :math:`g = g_t` for the current gradient, :math:`d = d_t` for the previous direction
(:math:`x_t = x_{t-1} - \eta d_t`) and :math:`r = d - g`. The loss near :math:`x_t` is modelled
by the larger of two planes,

.. math::

  \ell_g(y) = f(x_t) + \langle g, y - x_t \rangle, \qquad
  \ell_d(y) = f(x_t) - \delta + \langle d, y - x_t \rangle,

the linearisation at the current point and a "memory" plane whose slope is the accumulated
direction; :math:`\delta` says how far the memory plane sits below the loss at :math:`x_t`.
The step minimises that model plus a proximal term and a damping term of weight
:math:`\lambda \ge 0` that pulls the new point towards the heavy-ball point
:math:`x_t - \eta d` (the previous step repeated):

.. math::

  x_{t+1} = \arg\min_y \max(\ell_g(y), \ell_d(y)) + \tfrac{1}{2\eta}\|y - x_t\|^2
            + \tfrac{\lambda}{2\eta}\|y - x_t + \eta d\|^2 .

Write the max as :math:`\max_{\beta \in [0, 1]} (1-\beta)\ell_g + \beta\ell_d` and swap min and
max (the objective is convex in :math:`y`, linear in :math:`\beta`). For fixed :math:`\beta` the
minimiser is :math:`y = x_t - \eta d_{t+1}` with

.. math::

  d_{t+1} = \frac{u + \lambda d}{1 + \lambda}
          = \frac{\beta + \lambda}{1 + \lambda} d + \frac{1 - \beta}{1 + \lambda} g,
  \qquad u = (1-\beta) g + \beta d ,

and substituting it back leaves the dual function, a concave quadratic in :math:`\beta`,

.. math::

  q(\beta) = f(x_t) - \beta\delta - \frac{\eta}{2(1+\lambda)} \|g + \lambda d + \beta r\|^2
             + \text{const}.

Setting :math:`q'(\beta) = 0` and projecting onto the feasible interval (exact for a concave
quadratic in one variable) gives

.. math::

  \beta_t = \mathrm{clip}_{[0, \beta_{\max}]}\Big(
      \frac{-(1+\lambda)\,\delta/\eta - \langle r, g + \lambda d \rangle}{\|r\|^2}\Big),
  \qquad \beta_t = 0 \text{ when } \|r\| = 0 .

Capping at :math:`\beta_{\max} < 1` instead of 1 replaces the memory plane by the mixed plane
:math:`(1-\beta_{\max})\ell_g + \beta_{\max}\ell_d`, so some of the current gradient is always
kept. The choice of :math:`\delta` is the modelling decision:

* ``memory_plane="previous_loss"`` (default): the memory plane carries the previous loss level,
  :math:`f(x_{t-1})`, estimated to first order from the current point,
  :math:`f(x_{t-1}) \approx f(x_t) + \langle g, x_{t-1} - x_t \rangle = f(x_t) + \eta\langle g, d\rangle`,
  i.e. :math:`\delta = -\eta \langle g, d \rangle`. Then :math:`\eta` cancels and

  .. math::

    \beta_t = \mathrm{clip}_{[0, \beta_{\max}]}\Big(
        \frac{(1+\lambda)\langle g, d\rangle - \langle d - g, g + \lambda d\rangle}{\|d - g\|^2}\Big),

  which at :math:`\lambda = 0` is :math:`\|g\|^2 / \|d - g\|^2`. This is exactly the formula of
  the third-party implementation we were given: our derivation agrees with it, and shows which
  assumption it rests on. The memory plane is not a lower model of the loss at :math:`x_t`
  (it lies above it while the last step still looked like descent, :math:`\langle g, d\rangle > 0`),
  which is what makes it trust the memory more when the gradient keeps agreeing with it.
* ``memory_plane="tangent"``: both planes touch the loss at :math:`x_t` (:math:`\delta = 0`),
  giving :math:`\beta_t = \mathrm{clip}(-\langle d - g, g + \lambda d\rangle / \|d - g\|^2)`;
  at :math:`\lambda = 0` this picks the minimum-norm point of the segment :math:`[g, d]`, a
  conservative rule that on smooth convex problems mostly falls back to plain gradient descent.

The first step uses :math:`d_0 = g_0` (and reports :math:`\beta_0 = 0`). The AdamW variant runs
the same model in the Adam metric :math:`P_t = \mathrm{diag}(\sqrt{\hat v_t} + \epsilon)`: the
proximal terms become :math:`\tfrac{1}{2\eta}\|\cdot\|_{P_t}^2`, so the step is
:math:`x_{t+1} = x_t - \eta P_t^{-1} d_{t+1}` and every inner product of gradient-space vectors in
:math:`\beta_t` is taken in the dual metric, :math:`\langle a, b\rangle_{P_t^{-1}} =
\sum a \odot b / (\sqrt{\hat v_t} + \epsilon)`. There is no first-moment :math:`b_1`: the
adaptive :math:`\beta_t` replaces it, and :math:`d_0 = g_0` needs no bias correction.

Non-finite gradients: a NaN or infinite gradient makes :math:`\beta_t` and the stored direction
non-finite, and the direction stays poisoned for every later step. Wrap the optimizer in
``optax.apply_if_finite(opt, max_consecutive_errors)`` to skip such steps with the state intact.

References:
  Topollai & Choromanska, "Adaptive Memory Momentum via a Model-Based Framework for Deep Learning
  Optimization", AISTATS 2026, https://arxiv.org/abs/2510.04988
  Asi & Duchi, "Stochastic (Approximate) Proximal Point Methods: Convergence, Optimality, and
  Adaptivity", SIAM J. Optim. 2019, https://arxiv.org/abs/1810.05633 (model-based steps).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import tree_utils as otu

from momentum_jax.optim.checks import (
    check_beta, check_non_negative, check_positive, check_rate, fail)
from momentum_jax.optim.numerics import after

MemoryPlane = Literal["previous_loss", "tangent"]
_MEMORY_PLANES = ("previous_loss", "tangent")


class AdaptiveMemoryState(NamedTuple):
  """State of :func:`scale_by_adaptive_memory_momentum`.

  Attributes:
    count: number of updates applied so far (int32).
    direction: the direction :math:`d_t`, same structure and dtypes as the parameters.
    beta: the last :math:`\\beta_t` (float32 scalar), for logging.
  """

  count: jax.Array
  direction: optax.Updates
  beta: jax.Array


class AdaptiveMemoryAdamState(NamedTuple):
  """State of :func:`scale_by_adaptive_memory_adam`.

  Attributes:
    count: number of updates applied so far (int32).
    direction: the direction :math:`d_t` in gradient space, same structure and dtypes as the
      parameters.
    nu: the second-moment EMA :math:`v_t`, same structure and dtypes as the parameters.
    beta: the last :math:`\\beta_t` (float32 scalar), for logging.
  """

  count: jax.Array
  direction: optax.Updates
  nu: optax.Updates
  beta: jax.Array


def _check_common(
    lam: Any, beta_max: Any, memory_plane: str, fixed_beta: Any
) -> None:
  check_non_negative("lam", lam)
  check_beta("beta_max", beta_max)
  if memory_plane not in _MEMORY_PLANES:
    fail("memory_plane", memory_plane, f"one of {_MEMORY_PLANES}")
  if fixed_beta is not None:
    check_beta("fixed_beta", fixed_beta)


def _compute_dtype(tree: optax.Updates) -> jnp.dtype:
  """float32, or float64 when the leaves are float64 (bf16/f16 leaves are computed in float32)."""
  return jnp.result_type(jnp.float32, *(x.dtype for x in jax.tree.leaves(tree)))


def adaptive_memory_coefficient(
    grads: optax.Updates,
    direction: optax.Updates,
    lam: float | jax.Array = 0.1,
    beta_max: float | jax.Array = 0.9,
    *,
    memory_plane: MemoryPlane = "previous_loss",
    inv_metric: optax.Updates | None = None,
) -> jax.Array:
  r"""The adaptive momentum coefficient :math:`\beta_t` for one step (a scalar, >= float32).

  .. math::

    \beta_t = \mathrm{clip}_{[0, \beta_{\max}]}\Big(
        \frac{(1+\lambda)\langle g, d\rangle - \langle d - g, g + \lambda d\rangle}{\|d - g\|^2}
    \Big)

  for ``memory_plane="previous_loss"`` (drop the first term for ``"tangent"``), with
  :math:`\beta_t = 0` when :math:`d = g`. See the module docstring for the derivation.

  Args:
    grads: the current gradient :math:`g_t` (any pytree).
    direction: the previous direction :math:`d_t`, same structure as ``grads``.
    lam: damping :math:`\lambda \ge 0` towards the previous direction.
    beta_max: upper clip :math:`\beta_{\max} \in [0, 1)`.
    memory_plane: ``"previous_loss"`` or ``"tangent"``, the height of the memory plane.
    inv_metric: optional per-element weights :math:`P^{-1}` for the inner products (same
      structure as ``grads``); ``None`` is the Euclidean metric.

  Returns:
    The coefficient, a scalar (float32, or float64 for float64 inputs) in :math:`[0, \beta_{\max}]`.

  Example:
    >>> import jax.numpy as jnp
    >>> g, d = {"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([0.0, 1.0])}
    >>> float(adaptive_memory_coefficient(g, d, lam=0.0))  # |g|^2 / |d - g|^2
    0.5

  References:
    Topollai & Choromanska, https://arxiv.org/abs/2510.04988
  """
  # Both sums come from one two-output reduction per leaf, the numerator's terms combined per
  # entry, so that a computed ``inv_metric`` is evaluated inline once and never stored.
  acc = _compute_dtype(grads)
  lam = jnp.asarray(lam, acc)
  zero = jnp.zeros((), acc)

  def sums(g, d, w=None):
    g, d = g.astype(acc), d.astype(acc)
    r = d - g
    wr = r if w is None else r * w
    numerator = -wr * (g + lam * d)
    if memory_plane == "previous_loss":
      numerator = numerator + (1.0 + lam) * (g * d if w is None else g * d * w)
    return jax.lax.reduce((wr * r, numerator), (zero, zero),
                          lambda a, b: (a[0] + b[0], a[1] + b[1]), tuple(range(g.ndim)))

  trees = (grads, direction) + (() if inv_metric is None else (inv_metric,))
  leaf_sums = jax.tree.leaves(jax.tree.map(sums, *trees), is_leaf=lambda x: isinstance(x, tuple))
  rr = sum((x[0] for x in leaf_sums), zero)
  numerator = sum((x[1] for x in leaf_sums), zero)
  positive = rr > 0.0
  ratio = numerator / jnp.where(positive, rr, 1.0)
  beta = jnp.clip(ratio, 0.0, jnp.asarray(beta_max, acc))
  return jnp.where(positive, beta, 0.0)


def _next_direction(
    grads: optax.Updates,
    direction: optax.Updates,
    count: jax.Array,
    lam: Any,
    beta_max: Any,
    memory_plane: MemoryPlane,
    fixed_beta: Any,
    inv_metric: optax.Updates | None,
) -> tuple[optax.Updates, jax.Array]:
  """One direction update d_{t+1} and its beta_t; d_0 = g_0 with beta_0 = 0 on the first step."""
  if fixed_beta is None:
    beta = adaptive_memory_coefficient(
        grads, direction, lam, beta_max, memory_plane=memory_plane, inv_metric=inv_metric)
  else:
    beta = jnp.asarray(fixed_beta, _compute_dtype(grads))
  acc = _compute_dtype(grads)
  first = count == 0
  beta = jnp.where(first, 0.0, beta).astype(acc)
  lam = jnp.asarray(lam, acc)
  keep = (beta + lam) / (1.0 + lam)
  take = (1.0 - beta) / (1.0 + lam)

  def leaf(g, d):
    g_acc = g.astype(acc)
    new = keep * d.astype(acc) + take * g_acc
    return jnp.where(first, g_acc, new).astype(d.dtype)

  # The state keeps beta as a float32 scalar (for logging) whatever the compute dtype.
  return jax.tree.map(leaf, grads, direction), beta.astype(jnp.float32)


def scale_by_adaptive_memory_momentum(
    lam: float | jax.Array = 0.1,
    beta_max: float | jax.Array = 0.9,
    *,
    memory_plane: MemoryPlane = "previous_loss",
    fixed_beta: float | jax.Array | None = None,
) -> optax.GradientTransformation:
  r"""The gradient transformation of :func:`am_sgd`; see it for the update rule.

  It returns the direction :math:`d_{t+1}`, before the learning rate and without weight decay;
  chain it with ``optax.scale_by_learning_rate`` for :math:`x_{t+1} = x_t - \eta d_{t+1}`. The
  last :math:`\beta_t` is kept in the state's ``beta`` field (see :func:`adaptive_memory_beta`).

  Args:
    lam, beta_max, memory_plane: as in :func:`am_sgd`.
    fixed_beta: if given, use this constant :math:`\beta \in [0, 1)` instead of the adaptive one
      (an ablation; with ``lam=0`` this is EMA momentum :math:`d = \beta d + (1-\beta) g`).

  Returns:
    An ``optax.GradientTransformation`` with :class:`AdaptiveMemoryState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> tx = optax.chain(scale_by_adaptive_memory_momentum(), optax.scale_by_learning_rate(0.1))
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    >>> params = optax.apply_updates(params, updates)

  References:
    See :func:`am_sgd`.
  """
  _check_common(lam, beta_max, memory_plane, fixed_beta)

  def init_fn(params: optax.Params) -> AdaptiveMemoryState:
    return AdaptiveMemoryState(
        count=jnp.zeros((), jnp.int32),
        direction=otu.tree_zeros_like(params),
        beta=jnp.zeros((), jnp.float32),
    )

  def update_fn(
      updates: optax.Updates, state: AdaptiveMemoryState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, AdaptiveMemoryState]:
    del params
    direction, beta = _next_direction(
        updates, state.direction, state.count, lam, beta_max, memory_plane, fixed_beta, None)
    new_updates = jax.tree.map(lambda d, g: d.astype(g.dtype), direction, updates)
    return new_updates, AdaptiveMemoryState(
        count=optax.safe_increment(state.count), direction=direction, beta=beta)

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_adaptive_memory_adam(
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    lam: float | jax.Array = 0.1,
    beta_max: float | jax.Array = 0.9,
    *,
    memory_plane: MemoryPlane = "previous_loss",
    fixed_beta: float | jax.Array | None = None,
) -> optax.GradientTransformation:
  r"""The gradient transformation of :func:`am_adamw`; see it for the update rule.

  It returns :math:`d_{t+1} / P_t`, before the learning rate and the weight decay.

  Args:
    b2, eps, lam, beta_max, memory_plane: as in :func:`am_adamw`.
    fixed_beta: if given, a constant :math:`\beta \in [0, 1)` instead of the adaptive one (an
      ablation).

  Returns:
    An ``optax.GradientTransformation`` with :class:`AdaptiveMemoryAdamState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> tx = optax.chain(scale_by_adaptive_memory_adam(), optax.scale_by_learning_rate(1e-3))
    >>> params = {"w": jnp.ones(3)}
    >>> updates, state = tx.update({"w": jnp.ones(3)}, tx.init(params), params)

  References:
    See :func:`am_adamw`.
  """
  _check_common(lam, beta_max, memory_plane, fixed_beta)
  check_beta("b2", b2)
  check_positive("eps", eps)

  def init_fn(params: optax.Params) -> AdaptiveMemoryAdamState:
    return AdaptiveMemoryAdamState(
        count=jnp.zeros((), jnp.int32),
        direction=otu.tree_zeros_like(params),
        nu=otu.tree_zeros_like(params),
        beta=jnp.zeros((), jnp.float32),
    )

  def update_fn(
      updates: optax.Updates, state: AdaptiveMemoryAdamState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, AdaptiveMemoryAdamState]:
    del params
    acc = _compute_dtype(updates)
    b2_ = jnp.asarray(b2, acc)
    nu = jax.tree.map(
        lambda n, g: (b2_ * n.astype(acc) + (1.0 - b2_) * jnp.square(g.astype(acc))).astype(
            n.dtype),
        state.nu, updates)
    count = optax.safe_increment(state.count)
    correction = 1.0 - b2_ ** count.astype(acc)
    inv_metric = lambda n: 1.0 / (jnp.sqrt(n.astype(acc) / correction) + eps)
    direction, beta = _next_direction(
        updates, state.direction, state.count, lam, beta_max, memory_plane, fixed_beta,
        jax.tree.map(inv_metric, nu))
    # The inverse metric costs a square root and a division per entry: XLA:CPU would store it
    # rather than recompute it in both the reduction above and the update below. Reading the
    # second moments through `after` here gives the update its own copy of the expression.
    new_updates = jax.tree.map(
        lambda d, n, g: (d.astype(acc) * inv_metric(after(n, beta, count > 0))).astype(g.dtype),
        direction, nu, updates)
    return new_updates, AdaptiveMemoryAdamState(
        count=count, direction=direction, nu=nu, beta=beta)

  return optax.GradientTransformation(init_fn, update_fn)


def am_sgd(
    learning_rate: optax.ScalarOrSchedule,
    lam: float | jax.Array = 0.1,
    beta_max: float | jax.Array = 0.9,
    weight_decay: float | jax.Array = 0.0,
    *,
    memory_plane: MemoryPlane = "previous_loss",
) -> optax.GradientTransformation:
  r"""AM-SGD: SGD with adaptive memory momentum.

  .. math::

    \tilde g_t = g_t + w x_t, \qquad
    d_{t+1} = \frac{\beta_t + \lambda}{1 + \lambda} d_t + \frac{1 - \beta_t}{1 + \lambda}\tilde g_t,
    \qquad d_0 = \tilde g_0, \qquad x_{t+1} = x_t - \eta_t d_{t+1},

  with :math:`\beta_t` from :func:`adaptive_memory_coefficient` (one scalar for all leaves; see
  the module docstring). Weight decay :math:`w` is coupled (an L2 term added to the gradient, as
  in ``torch.optim.SGD``), so it also enters :math:`\beta_t`.
  :func:`scale_by_adaptive_memory_momentum` computes :math:`d_{t+1}`, and keeps the last
  :math:`\beta_t` in its state (see :func:`adaptive_memory_beta`).

  Args:
    learning_rate: :math:`\eta`, a non-negative scalar or an optax schedule.
    lam: damping :math:`\lambda \ge 0` of the step towards the previous direction; 0.1 is the
      reported deep-learning setting.
    beta_max: upper clip :math:`\beta_{\max} \in [0, 1)` of :math:`\beta_t`; 0.9 is the reported
      setting.
    weight_decay: coupled L2 coefficient :math:`w`.
    memory_plane: ``"previous_loss"`` (default; the published rule) or ``"tangent"``; see the
      module docstring.

  Returns:
    An ``optax.GradientTransformation`` (a chain).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> loss = lambda p: jnp.sum(p["w"] ** 2)
    >>> tx = am_sgd(0.1)
    >>> state = tx.init(params)
    >>> for _ in range(50):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(loss(params) < 1e-6)
    True

  References:
    Topollai & Choromanska, https://arxiv.org/abs/2510.04988
  """
  check_rate("learning_rate", learning_rate)
  check_rate("weight_decay", weight_decay)
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      scale_by_adaptive_memory_momentum(lam, beta_max, memory_plane=memory_plane),
      optax.scale_by_learning_rate(learning_rate),
  )


def am_adamw(
    learning_rate: optax.ScalarOrSchedule,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    lam: float | jax.Array = 0.1,
    beta_max: float | jax.Array = 0.9,
    weight_decay: float | jax.Array = 1e-2,
    *,
    memory_plane: MemoryPlane = "previous_loss",
) -> optax.GradientTransformation:
  r"""AM-AdamW: AdamW whose first moment is adaptive memory momentum in the Adam metric.

  .. math::

    v_t = b_2 v_{t-1} + (1 - b_2) g_t^2, \quad
    P_t = \sqrt{v_t / (1 - b_2^{t+1})} + \epsilon, \\
    d_{t+1} = \frac{\beta_t + \lambda}{1 + \lambda} d_t + \frac{1 - \beta_t}{1 + \lambda} g_t,
    \quad d_0 = g_0, \\
    x_{t+1} = x_t - \eta_t \big( d_{t+1} / P_t + w x_t \big),

  with :math:`\beta_t` from :func:`adaptive_memory_coefficient` with inner products weighted by
  :math:`P_t^{-1}` (one scalar for all leaves; see the module docstring) and decoupled weight
  decay :math:`w` (as in ``optax.adamw``). :func:`scale_by_adaptive_memory_adam` computes
  :math:`d_{t+1} / P_t`.

  Args:
    learning_rate: :math:`\eta`, a non-negative scalar or an optax schedule.
    b2: decay of the second-moment EMA, in [0, 1).
    eps: added to :math:`\sqrt{\hat v}` (outside the square root), > 0.
    lam: damping :math:`\lambda \ge 0` of the step towards the previous direction; 0.1 is the
      reported deep-learning setting.
    beta_max: upper clip :math:`\beta_{\max} \in [0, 1)` of :math:`\beta_t`; 0.9 is the reported
      setting.
    weight_decay: decoupled weight decay :math:`w`.
    memory_plane: ``"previous_loss"`` (default) or ``"tangent"``; see the module docstring.

  Returns:
    An ``optax.GradientTransformation`` (a chain).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> loss = lambda p: jnp.sum(p["w"] ** 2)
    >>> tx = am_adamw(0.05, weight_decay=0.0)
    >>> state = tx.init(params)
    >>> for _ in range(300):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(loss(params) < 1e-2)
    True

  References:
    Topollai & Choromanska, https://arxiv.org/abs/2510.04988
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", https://arxiv.org/abs/1711.05101
  """
  check_rate("learning_rate", learning_rate)
  check_rate("weight_decay", weight_decay)
  return optax.chain(
      scale_by_adaptive_memory_adam(b2, eps, lam, beta_max, memory_plane=memory_plane),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
  )


def adaptive_memory_beta(opt_state: optax.OptState) -> jax.Array | None:
  r"""The last :math:`\beta_t` from an optimizer state that contains one adaptive memory transform.

  Works through ``optax.chain``, ``optax.inject_hyperparams``, ``optax.MultiSteps`` and
  ``optax.apply_if_finite`` (it searches the state for this module's state types, so a model
  parameter that happens to be named ``beta``, held in another optimizer's moments, is not
  mistaken for it).

  Args:
    opt_state: an optimizer state.

  Returns:
    The float32 scalar :math:`\beta_t` of the last step (0 before the second step); None when
    the state holds no adaptive memory transform.

  Raises:
    ValueError: the state holds more than one.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = am_sgd(0.1)
    >>> state = tx.init({"w": jnp.ones(2)})
    >>> float(adaptive_memory_beta(state))
    0.0
  """
  state_types = (AdaptiveMemoryState, AdaptiveMemoryAdamState)
  is_state = lambda x: isinstance(x, state_types)
  states = [leaf for leaf in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(leaf)]
  if len(states) > 1:
    raise ValueError(f"opt_state holds {len(states)} adaptive memory states; expected at most one")
  return states[0].beta if states else None
