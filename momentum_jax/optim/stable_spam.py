"""Stable-SPAM: SPAM with adaptive spike clipping and gradient-norm normalisation.

Reproduces the authors' reference implementation (``TianjinYellow/StableSPAM``,
``galore_torch/stablespam.py``) step for step; :func:`stable_spam` documents where the reference
departs from the paper's algorithm (we follow the reference).
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from momentum_jax.optim.checks import (
    check_beta, check_count, check_non_negative, check_rate, check_unit_interval)
from momentum_jax.optim.numerics import float_dtype


class ScaleByStableSpamState(NamedTuple):
  """State of :func:`scale_by_stable_spam`.

  Attributes:
    count: number of steps taken so far (the reference's ``total_steps``).
    step: the reference's per-parameter ``step``: incremented every step, set back to 1 at each
      momentum reset; it drives every bias correction.
    mu: first moments of the normalised gradient.
    nu: second moments of the normalised gradient.
    max_abs: per leaf, EMA of ``max |g|`` (AdaClip's threshold before bias correction).
    norm_mu: per leaf, EMA of ``||g||`` (AdaGN).
    norm_nu: per leaf, EMA of ``||g||^2`` (AdaGN).
  """
  count: jax.Array
  step: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  max_abs: optax.Updates
  norm_mu: optax.Updates
  norm_nu: optax.Updates


def _stat_dtype(x: jax.Array) -> jnp.dtype:
  """Per-tensor statistics are kept in at least float32 (bf16 leaves would lose them)."""
  return jnp.promote_types(x.dtype, jnp.float32)


def _is_reset_step(count: jax.Array, reset_interval: Any) -> jax.Array:
  """Whether the 1-indexed step ``count`` is a momentum reset (never when the interval is 0)."""
  return (reset_interval > 0) & (count % jnp.maximum(reset_interval, 1) == 0)


def _cosine_factor(k: jax.Array, total_steps: Any | None, eta_min: Any) -> jax.Array:
  r""":math:`\sigma` at the 1-indexed step ``k``: 1 without ``total_steps``, else its cosine."""
  if total_steps is None:
    return jnp.ones([], float_dtype())
  phase = jnp.pi * jnp.asarray(k, float_dtype()) / (total_steps + 1.0)
  return eta_min + (1.0 - eta_min) * 0.5 * (1.0 + jnp.cos(phase))


def _ada_clip_limit(
    g: jax.Array, max_abs: jax.Array, gamma3: Any, jf: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """AdaClip's statistics of one leaf: ``(max |g|, new max_abs, limit, shrink)``.

  Entries above ``limit``, the bias-corrected running max of ``|g|``, are multiplied by ``shrink``.
  """
  peak = jnp.max(jnp.abs(g.astype(_stat_dtype(g))), initial=0.0)
  max_abs = gamma3 * max_abs + (1.0 - gamma3) * peak
  limit = max_abs / (1.0 - gamma3**jf)
  shrink = limit / jnp.where(peak > 0, peak, 1.0)
  return peak, max_abs, limit, shrink


def _ada_clip(g: jax.Array, limit: jax.Array, shrink: jax.Array) -> jax.Array:
  """``g`` in the statistics dtype, its entries above ``limit`` in magnitude times ``shrink``."""
  x = g.astype(_stat_dtype(g))
  return jnp.where((x > limit) | (-x > limit), x * shrink, x)


def _clipped_norm(
    g: jax.Array, peak: jax.Array, limit: jax.Array, shrink: jax.Array
) -> jax.Array:
  """``||_ada_clip(g, limit, shrink)||_2``, without materialising the clipped gradient."""
  dtype = _stat_dtype(g)

  def clipped_sum_of_squares(g):
    # ||clip(g)||^2 = sum(x^2 - [x^2 > limit^2] (1 - shrink^2) x^2), the indicator written as
    # sign(d + |d|), d = x^2 - limit^2: in this arithmetic form XLA:CPU reads g inside the
    # reduction loop, where a select (or a broadcast constant) would be written to memory.
    x2 = jnp.square(g.astype(dtype))
    excess = x2 - limit * limit
    over = jnp.sign(excess + jnp.abs(excess))
    return jnp.sum(x2 - x2 * over * (1.0 - shrink * shrink))

  def sum_of_squares(g):
    return jnp.sum(jnp.square(g.astype(dtype)))

  # When no entry exceeds the limit the clipped norm is the plain one, a loop about 5x faster
  # on XLA:CPU than the masked one.
  return jnp.sqrt(jax.lax.cond(peak > limit, clipped_sum_of_squares, sum_of_squares, g))


def _ada_gn_scale(
    norm: jax.Array, norm_mu: jax.Array, norm_nu: jax.Array, g1: jax.Array, gamma2: Any,
    jf: jax.Array, eps: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """AdaGN of one leaf: ``(scale, new norm_mu, new norm_nu)``.

  ``scale`` gives the gradient the norm ``mu_hat / (sqrt(nu_hat) + eps)`` of its running statistics.
  """
  norm_mu = g1 * norm_mu + (1.0 - g1) * norm
  norm_nu = gamma2 * norm_nu + (1.0 - gamma2) * norm * norm
  target = (norm_mu / (1.0 - g1**jf)) / (jnp.sqrt(norm_nu / (1.0 - gamma2**jf)) + eps)
  scale = jnp.where(norm > 0, target / jnp.where(norm > 0, norm, 1.0), 1.0)
  return scale, norm_mu, norm_nu


def _leaf_update(
    g: jax.Array, m: jax.Array, v: jax.Array, max_abs: jax.Array, norm_mu: jax.Array,
    norm_nu: jax.Array, *, discard: jax.Array, jf: jax.Array, g1: jax.Array, beta1: jax.Array,
    bc1: jax.Array, bc2: jax.Array, b2: Any, gamma2: Any, gamma3: Any, eps: Any,
    mu_dtype: Any | None,
) -> tuple[jax.Array, ...]:
  """One leaf's Stable-SPAM step: the update, then the new ``m, v, max_abs, norm_mu, norm_nu``."""
  dtype = _stat_dtype(g)
  mu_type = g.dtype if mu_dtype is None else mu_dtype
  peak, max_abs, limit, shrink = _ada_clip_limit(g, max_abs, gamma3, jf)
  norm = _clipped_norm(g, peak, limit, shrink)
  scale, norm_mu, norm_nu = _ada_gn_scale(norm, norm_mu, norm_nu, g1, gamma2, jf, eps)
  # Each moment is one elementwise pass that overwrites its own buffer; the update below reads
  # only the new moments, so no old buffer is needed after it is overwritten.
  x = (_ada_clip(g, limit, shrink) * scale).astype(g.dtype)
  m = beta1 * jnp.where(discard, jnp.zeros_like(m), m) + (1.0 - beta1) * x
  v = b2 * jnp.where(discard, jnp.zeros_like(v), v) + (1.0 - b2) * x * x
  m, v = m.astype(mu_type), v.astype(g.dtype)
  u = (m / bc1) / (jnp.sqrt(v) / jnp.sqrt(bc2) + eps)
  return (u.astype(g.dtype), m, v, max_abs.astype(dtype), norm_mu.astype(dtype),
          norm_nu.astype(dtype))


def scale_by_stable_spam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    gamma1: float = 0.7,
    gamma2: float = 0.9,
    gamma3: float = 0.999,
    reset_interval: int = 1000,
    total_steps: int | None = None,
    eta_min: float = 0.5,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
  r"""The gradient transformation of :func:`stable_spam`; see it for the update rule.

  It returns Stable-SPAM's step :math:`u`, before the weight decay and the learning rate.

  Args:
    b1, b2, eps, gamma1, gamma2, gamma3, reset_interval, total_steps, eta_min, mu_dtype: as in
      :func:`stable_spam`.

  Returns:
    An :class:`optax.GradientTransformation` whose state is a :class:`ScaleByStableSpamState`.

  Raises:
    ValueError: a concrete hyper-parameter out of range (the message names it).

  Example:
    >>> import jax.numpy as jnp
    >>> from momentum_jax.optim import scale_by_stable_spam
    >>> tx = scale_by_stable_spam(reset_interval=7)
    >>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state)
    >>> print(updates["w"].shape, int(state.step))
    (2, 3) 1

  References:
    See :func:`stable_spam`.
  """
  check_beta("b1", b1)
  check_beta("b2", b2)
  check_non_negative("eps", eps)
  check_beta("gamma1", gamma1)
  check_beta("gamma2", gamma2)
  check_beta("gamma3", gamma3)
  check_count("reset_interval", reset_interval, 0)
  if total_steps is not None:
    check_count("total_steps", total_steps, 1)
  check_unit_interval("eta_min", eta_min)
  mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)

  def init_fn(params: optax.Params) -> ScaleByStableSpamState:
    scalar_zeros = lambda p: jnp.zeros([], _stat_dtype(p))
    return ScaleByStableSpamState(
        count=jnp.zeros([], jnp.int32),
        step=jnp.zeros([], jnp.int32),
        mu=jax.tree.map(
            lambda p: jnp.zeros_like(p, dtype=p.dtype if mu_dtype is None else mu_dtype), params),
        nu=jax.tree.map(jnp.zeros_like, params),
        max_abs=jax.tree.map(scalar_zeros, params),
        norm_mu=jax.tree.map(scalar_zeros, params),
        norm_nu=jax.tree.map(scalar_zeros, params),
    )

  def update_fn(
      updates: optax.Updates, state: ScaleByStableSpamState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, ScaleByStableSpamState]:
    del params
    k = optax.safe_increment(state.count)
    j = optax.safe_increment(state.step)
    adam_j = jnp.where(_is_reset_step(k, reset_interval), 1, j)
    sigma = _cosine_factor(k, total_steps, eta_min)
    g1 = gamma1 * sigma
    beta1 = b1 * sigma
    jf = jnp.asarray(j, float_dtype())
    ajf = jnp.asarray(adam_j, float_dtype())
    # The previous step was a reset: the moments it stored are discarded now (see stable_spam).
    discard = _is_reset_step(state.count, reset_interval) & (state.count > 0)
    leaf = functools.partial(
        _leaf_update, discard=discard, jf=jf, g1=g1, beta1=beta1, bc1=1.0 - beta1**ajf,
        bc2=1.0 - b2**ajf, b2=b2, gamma2=gamma2, gamma3=gamma3, eps=eps, mu_dtype=mu_dtype)
    out = jax.tree.map(
        leaf, updates, state.mu, state.nu, state.max_abs, state.norm_mu, state.norm_nu)
    u, mu, nu, max_abs, norm_mu, norm_nu = jax.tree.transpose(
        jax.tree.structure(updates), jax.tree.structure((0,) * 6), out)
    return u, ScaleByStableSpamState(
        count=k, step=adam_j, mu=mu, nu=nu, max_abs=max_abs, norm_mu=norm_mu, norm_nu=norm_nu)

  return optax.GradientTransformation(init_fn, update_fn)


def stable_spam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    gamma1: float = 0.7,
    gamma2: float = 0.9,
    gamma3: float = 0.999,
    reset_interval: int = 1000,
    total_steps: int | None = None,
    eta_min: float = 0.5,
    mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
  r"""Stable-SPAM optimizer: AdaClip, AdaGN, momentum reset, then Adam, with decoupled weight decay.

  Per leaf (tensor), with :math:`k` the 1-indexed step, :math:`j` the reference's step counter
  (``step`` in the state), :math:`\eta` the learning rate at this step and the optional cosine
  factor :math:`\sigma = \eta_{\min} + (1 - \eta_{\min}) \tfrac12 (1 + \cos(\pi k / (T + 1)))`
  (:math:`\sigma = 1` when ``total_steps`` :math:`T` is ``None``):

  .. math::
    j &\leftarrow j + 1, \qquad
    M \leftarrow \gamma_3 M + (1 - \gamma_3) \max_i |g_i|, \qquad
    \hat M = M / (1 - \gamma_3^{\,j}) \\
    g_i &\leftarrow g_i \, \hat M / \max_i |g_i| \quad \text{where } |g_i| > \hat M
      \qquad \text{(AdaClip)} \\
    n &= \|g\|_2, \quad \mu \leftarrow \gamma_1 \sigma \mu + (1 - \gamma_1 \sigma) n, \quad
    \nu \leftarrow \gamma_2 \nu + (1 - \gamma_2) n^2 \\
    g &\leftarrow \frac{g}{n} \cdot
      \frac{\mu / (1 - (\gamma_1 \sigma)^j)}{\sqrt{\nu / (1 - \gamma_2^{\,j})} + \epsilon}
      \quad (n > 0) \qquad \text{(AdaGN)} \\
    j &\leftarrow 1 \quad \text{if } k \bmod \Delta T = 0 \qquad \text{(momentum reset)} \\
    m &\leftarrow \beta_1 \sigma \, m + (1 - \beta_1 \sigma) g, \quad
    v \leftarrow \beta_2 v + (1 - \beta_2) g^2, \quad
    u = \frac{m / (1 - (\beta_1 \sigma)^j)}{\sqrt{v / (1 - \beta_2^{\,j})} + \epsilon} \\
    p &\leftarrow p (1 - \eta \lambda) - \eta u

  and the moments :math:`m, v` a reset step produced are replaced by zero at the start of the
  next step, so that step starts from zero moments. The state's ``mu``/``nu`` therefore still hold
  them right after a reset step (its ``step`` is 1); they are discarded when the next update runs.
  This keeps one elementwise pass per moment, each overwriting its own donated buffer, and the
  update reading only the new moments: no buffer is read after it is overwritten, so none is
  copied. :func:`scale_by_stable_spam` computes :math:`u`.

  The weight decay is AdamW-style, before the step, as in the reference: the optimizer is exactly
  ``optax.chain(scale_by_stable_spam(...), optax.add_decayed_weights(weight_decay),
  optax.scale_by_learning_rate(learning_rate))``. Defaults are the reference constructor's
  (its example scripts use ``reset_interval=500``; its README suggests ``total_steps`` set to the
  training length for LLMs).

  This is the reference's behaviour, which differs from the paper's algorithm in three ways we
  keep: (1) on a reset step the update still uses the moments accumulated so far, bias-corrected
  as if it were the first step (:math:`j = 1`), and only the next step starts from zero moments
  (with :math:`j = 2`); (2) the AdaClip and AdaGN statistics are never reset, but their bias
  corrections use :math:`j`, so after each reset the clipping threshold is inflated (clipping is
  effectively off for a while) and the norm ratio is rescaled; (3) the optional cosine factor
  :math:`\sigma` scales :math:`\beta_1` and :math:`\gamma_1`. The reference's ``gamma1 = -1``
  shorthand for ``gamma1 = b1`` is not supported: pass the value.

  NaN or inf gradients make ``max|g|`` and the norm non-finite, which then stay in the never-reset
  per-tensor statistics and corrupt every later step; wrap the optimizer in
  :func:`optax.apply_if_finite` to skip such steps:

    >>> import jax.numpy as jnp
    >>> import optax
    >>> from momentum_jax.optim import stable_spam
    >>> tx = optax.apply_if_finite(stable_spam(1e-3), max_consecutive_errors=5)
    >>> params = {"w": jnp.ones((2, 2))}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.full((2, 2), jnp.inf)}, state, params)
    >>> print(float(jnp.abs(updates["w"]).sum()), int(state.notfinite_count))
    0.0 1

  Args:
    learning_rate: :math:`\eta`, a constant or an optax schedule of the step count.
    b1: decay of the first moment.
    b2: decay of the second moment.
    eps: added in the denominators of AdaGN and of the Adam step.
    weight_decay: :math:`\lambda`, decoupled weight decay.
    gamma1: :math:`\gamma_1`, decay of the gradient-norm EMA.
    gamma2: :math:`\gamma_2`, decay of the squared-gradient-norm EMA.
    gamma3: :math:`\gamma_3`, decay of the EMA of ``max |g|``.
    reset_interval: :math:`\Delta T`, momentum-reset period in steps; 0 disables resets.
    total_steps: :math:`T`; when given, the cosine factor :math:`\sigma` on ``b1`` and ``gamma1``
      applies.
    eta_min: :math:`\eta_{\min}`, the floor of :math:`\sigma`.
    mu_dtype: dtype of the first moment; the gradient's dtype when ``None``.

  Returns:
    An :class:`optax.GradientTransformation`. Under :func:`optax.inject_hyperparams` every numeric
    argument may be traced (``total_steps`` only when given as a number); values are only
    validated when concrete.

  Raises:
    ValueError: a concrete hyper-parameter out of range (the message names it).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from momentum_jax.optim import stable_spam
    >>> loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
    >>> tx = stable_spam(0.1, reset_interval=50)
    >>> params = {"w": jnp.zeros(3)}
    >>> state = tx.init(params)
    >>> for _ in range(200):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(bool(loss(params) < 1e-2))
    True

  References:
    Huang et al., "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam",
    arXiv:2502.17055. Reference code: https://github.com/TianjinYellow/StableSPAM.
  """
  check_rate("learning_rate", learning_rate)
  check_non_negative("weight_decay", weight_decay)
  return optax.chain(
      scale_by_stable_spam(
          b1=b1, b2=b2, eps=eps, gamma1=gamma1, gamma2=gamma2, gamma3=gamma3,
          reset_interval=reset_interval, total_steps=total_steps, eta_min=eta_min,
          mu_dtype=mu_dtype),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
  )
