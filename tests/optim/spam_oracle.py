"""NumPy float64 oracles of SPAM and Stable-SPAM, written from the authors' PyTorch references.

Each class follows its reference's ``step`` line by line (per-parameter state dicts, Python-side
counters, in-place moment updates), independently of our JAX code, so the tests compare two
implementations of the same algorithm.
"""

import math
from collections.abc import Callable

import numpy as np

LearningRate = float | Callable[[int], float]


def _lr_at(learning_rate: LearningRate, count: int) -> float:
  return float(learning_rate(count)) if callable(learning_rate) else float(learning_rate)


def spam_warmup(t: int, warmup_steps: int) -> float:
  """1 - CosineDecay(0.99, N).get_dr(t): torch's closed-form cosine annealing over N + 1 steps."""
  if t >= warmup_steps:
    return 1.0
  return 1.0 - 0.99 * (1.0 + math.cos(math.pi * t / (warmup_steps + 1))) / 2.0


class SpamOracle:
  """SPAM (``galore_torch/SPAM.py``). Sparse parameters take their masks from the caller."""

  def __init__(self, params: dict[str, np.ndarray], learning_rate: LearningRate,
               b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6, weight_decay: float = 0.0,
               warmup_steps: int = 150, threshold: float = 5000.0, delta_t: int = 500,
               grad_accu_steps: int = 20, reset_count_on_reset: bool = False,
               masks: dict[str, np.ndarray] | None = None):
    self.params = {k: np.array(v, np.float64) for k, v in params.items()}
    self.learning_rate = learning_rate
    self.b1, self.b2, self.eps, self.weight_decay = b1, b2, eps, weight_decay
    self.warmup_steps, self.threshold = warmup_steps, threshold
    self.delta_t, self.grad_accu_steps = delta_t, grad_accu_steps
    self.reset_count_on_reset = reset_count_on_reset
    self.masks = {k: np.array(v, bool) for k, v in (masks or {}).items()}
    self.state: dict[str, dict] = {k: {} for k in self.params}
    self.total_step = 0
    self.current_step = warmup_steps + 1
    self.redraw_due = False
    self.clipped: list[int] = []  # number of clipped entries at each step

  def redraw(self, name: str, new_mask: np.ndarray) -> None:
    """The reference's ``update_mask_random``: keep the moments on the overlap of old and new."""
    assert self.redraw_due, "mask changed at a step where the reference keeps it"
    old_mask, new_mask = self.masks[name], np.array(new_mask, bool)
    state = self.state[name]
    both = new_mask & old_mask
    for moment in ("exp_avg", "exp_avg_sq"):
      fresh = np.zeros(int(new_mask.sum()))
      fresh[both[new_mask]] = state[moment][both[old_mask]]
      state[moment] = fresh
    self.masks[name] = new_mask

  def step(self, grads: dict[str, np.ndarray]) -> None:
    lr = _lr_at(self.learning_rate, self.total_step)
    scale = spam_warmup(self.current_step, self.warmup_steps)
    k = self.total_step + 1
    clipped = 0
    for name, p in self.params.items():
      grad = np.array(grads[name], np.float64)
      state = self.state[name]
      state.setdefault("step", 0)
      sparse = name in self.masks
      if sparse:
        grad = grad[self.masks[name]]
      if "exp_avg" not in state:
        state["exp_avg"] = np.zeros_like(grad)
        state["exp_avg_sq"] = np.zeros_like(grad)
      if k % self.delta_t == 0:
        state["exp_avg"] = np.zeros_like(grad)
        state["exp_avg_sq"] = np.zeros_like(grad)
        if self.reset_count_on_reset:
          state["step"] = 0
      exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
      state["step"] += 1
      if k >= self.grad_accu_steps and k % self.delta_t >= self.grad_accu_steps:
        spike = grad**2 > self.threshold * exp_avg_sq
        grad[spike] = np.sign(grad[spike]) * np.sqrt(exp_avg_sq[spike] * self.threshold)
        clipped += int(spike.sum())
      exp_avg *= self.b1
      exp_avg += (1.0 - self.b1) * grad
      exp_avg_sq *= self.b2
      exp_avg_sq += (1.0 - self.b2) * grad * grad
      denom = np.sqrt(exp_avg_sq) + self.eps
      step_size = lr * math.sqrt(1.0 - self.b2 ** state["step"]) / (1.0 - self.b1 ** state["step"])
      norm_grad = exp_avg / denom
      if sparse:
        full = np.zeros_like(p)
        full[self.masks[name]] = norm_grad
        p -= step_size * (full * scale)
        # The reference's decay of sparse parameters writes to a copy: no decay.
      else:
        p -= step_size * scale * norm_grad
        if self.weight_decay > 0:
          p += (-lr * self.weight_decay) * p
    self.clipped.append(clipped)
    self.total_step += 1
    self.current_step += 1
    self.redraw_due = (self.total_step + 1) % self.delta_t == 0
    if self.redraw_due:
      self.current_step = 0


class StableSpamOracle:
  """Stable-SPAM (``galore_torch/stablespam.py``), ``amsgrad=False``."""

  def __init__(self, params: dict[str, np.ndarray], learning_rate: LearningRate,
               b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
               gamma1: float = 0.7, gamma2: float = 0.9, gamma3: float = 0.999,
               total_t: int | None = None, eta_min: float = 0.5, update_proj_gap: int = 1000):
    self.params = {k: np.array(v, np.float64) for k, v in params.items()}
    self.learning_rate = learning_rate
    self.b1, self.b2, self.eps, self.weight_decay = b1, b2, eps, weight_decay
    self.gamma1, self.gamma2, self.theta = gamma1, gamma2, gamma3
    self.total_t, self.eta_min, self.update_proj_gap = total_t, eta_min, update_proj_gap
    self.state: dict[str, dict] = {k: {} for k in self.params}
    self.total_steps = 0
    self.clipped: list[int] = []

  def step(self, grads: dict[str, np.ndarray]) -> None:
    lr = _lr_at(self.learning_rate, self.total_steps)
    self.total_steps += 1
    if self.total_t is not None:  # CosineDecay(1.0, total_T, eta_min).get_dr(total_steps)
      cos = math.cos(math.pi * self.total_steps / (self.total_t + 1))
      scale = self.eta_min + (1.0 - self.eta_min) * (1.0 + cos) / 2.0
    else:
      scale = 1.0
    clipped = 0
    for name, p in self.params.items():
      p *= 1.0 - lr * self.weight_decay
      grad = np.array(grads[name], np.float64)
      state = self.state[name]
      if "exp_avg" not in state:
        state.update(step=0, exp_avg=np.zeros_like(grad), exp_avg_sq=np.zeros_like(grad),
                     m_norm_t=0.0, v_norm_t=0.0, m_max_t=0.0)
      exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
      max_gradient = np.max(np.abs(grad))
      state["step"] += 1
      m_max_t = self.theta * state["m_max_t"] + (1 - self.theta) * max_gradient
      m_max_hat = m_max_t / (1 - self.theta ** state["step"])
      mask = np.abs(grad) > m_max_hat
      if mask.sum() > 0:
        grad[mask] = grad[mask] / max_gradient * m_max_hat
      clipped += int(mask.sum())
      state["m_max_t"] = m_max_t
      grad_norm = np.linalg.norm(grad)
      g1 = self.gamma1 * scale
      m_norm_t = g1 * state["m_norm_t"] + (1 - g1) * grad_norm
      v_norm_t = self.gamma2 * state["v_norm_t"] + (1 - self.gamma2) * grad_norm**2
      m_norm_hat = m_norm_t / (1 - g1 ** state["step"])
      v_norm_hat = v_norm_t / (1 - self.gamma2 ** state["step"])
      c_norm_t = m_norm_hat / (np.sqrt(v_norm_hat) + self.eps)
      if grad_norm > 0:
        grad = grad / grad_norm * c_norm_t
      state["m_norm_t"], state["v_norm_t"] = m_norm_t, v_norm_t
      if self.update_proj_gap != 0 and self.total_steps % self.update_proj_gap == 0:
        # Rebinds the state entries; the locals above still point at the old moments.
        state["exp_avg"] = np.zeros_like(grad)
        state["exp_avg_sq"] = np.zeros_like(grad)
        state["step"] = 1
      beta1 = self.b1 * scale
      bias_correction1 = 1 - beta1 ** state["step"]
      bias_correction2 = 1 - self.b2 ** state["step"]
      exp_avg *= beta1
      exp_avg += (1 - beta1) * grad
      exp_avg_sq *= self.b2
      exp_avg_sq += (1 - self.b2) * grad * grad
      denom = np.sqrt(exp_avg_sq) / math.sqrt(bias_correction2) + self.eps
      p -= lr / bias_correction1 * (exp_avg / denom)
    self.clipped.append(clipped)
