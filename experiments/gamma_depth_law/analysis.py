"""γ*(N) from a γ grid by two estimators, their bootstrap intervals, the power-law fit
γ* = a · N^b of each, and the summary of a run's units.

The best γ of a depth is read off the seed-mean held-out loss over the grid γ_0 = 0 < γ_1 < … :
the argmin γ_i, refined when γ_{i−1} > 0 and γ_{i+1} exist by the vertex of the parabola through
the three points in u = log γ,

    u* = u_i − ½ · [(u_i − u_{i−1})² (ℓ_i − ℓ_{i+1}) − (u_i − u_{i+1})² (ℓ_i − ℓ_{i−1})]
              / [(u_i − u_{i−1}) (ℓ_i − ℓ_{i+1}) − (u_i − u_{i+1}) (ℓ_i − ℓ_{i−1})],

kept inside [u_{i−1}, u_{i+1}]. γ* = 0 when γ = 0 is best. The interval resamples the seeds
with replacement (the same resample for every γ of a depth, whose members share seeds) and
takes the 2.5 and 97.5 percentiles of γ*. The fit is least squares of log γ* on log N over the
depths with γ* > 0, on the point estimates and on each resample.

The second estimator is the upper edge of the working window: the largest γ whose seed-mean
held-out accuracy still reaches a threshold τ (``ACCURACY_THRESHOLD`` = 0.9 unless told
otherwise). With γ_i the largest grid γ where accuracy α_i ≥ τ and α_{i+1} < τ, the edge is
where the straight line through the two points in u = log γ crosses τ,

    u_edge = u_i + (α_i − τ) / (α_i − α_{i+1}) · (u_{i+1} − u_i),

so it lies in [γ_i, γ_{i+1}). Without a line in log γ it is the grid point: γ_i = 0 (only
softmax reaches τ, no positive γ does) gives 0, which the fit skips like γ* = 0, and the top of
the grid gives the top γ, a lower bound of the edge. No γ reaching τ gives NaN: the depth is
left out of the fit and of the verdict. The interval uses the same seed resamples as γ*; a
resample without an edge counts as 0 for the percentiles (the interval then reaches down to
"no positive γ works") and as NaN in the fit (skipped). Both estimators get the verdict of
``verdict`` against the paper's 4.17 · N^−0.74 (Maitra, arXiv 2602.04902).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from momentum_jax.experiments.gamma_depth_law.config import PAPER_A, PAPER_B, ExperimentConfig

# The learned-γ members of a unit: on the plain shear and on the gain-normalised one (each a
# list with one entry per starting γ).
SHEARS = ("learned", "learned_normalized")
# The held-out accuracy a γ must reach to be inside the working window (a fraction in (0, 1]).
ACCURACY_THRESHOLD = 0.9


class Interval(NamedTuple):
  """A point estimate and its 95 % bootstrap interval."""

  value: float
  low: float
  high: float

  def contains(self, x: float) -> bool:
    return self.low <= x <= self.high


class PowerLawFit(NamedTuple):
  """γ* = a · N^b fitted on the depths with γ* > 0.

  Attributes:
    a: the prefactor with its interval (nan without two such depths).
    b: the exponent with its interval.
    depths_used: the depths the point fit used.
    resamples_fitted: fraction of resamples with at least two depths with γ* > 0.
  """

  a: Interval
  b: Interval
  depths_used: tuple[int, ...]
  resamples_fitted: float


def best_gamma(gammas: Sequence[float], loss_G: np.ndarray) -> float:
  """γ* of one loss-per-γ curve (see the module docstring)."""
  gammas = np.asarray(gammas, np.float64)
  i = int(np.argmin(loss_G))
  if gammas[i] == 0.0 or i == 0 or gammas[i - 1] <= 0.0 or i == len(gammas) - 1:
    return float(gammas[i])
  u = np.log(gammas[i - 1:i + 2])
  l0, l1, l2 = (float(x) for x in loss_G[i - 1:i + 2])
  numerator = (u[1] - u[0]) ** 2 * (l1 - l2) - (u[1] - u[2]) ** 2 * (l1 - l0)
  denominator = (u[1] - u[0]) * (l1 - l2) - (u[1] - u[2]) * (l1 - l0)
  if denominator == 0.0:
    return float(gammas[i])
  vertex = u[1] - 0.5 * numerator / denominator
  return float(np.exp(np.clip(vertex, u[0], u[2])))


def seed_resamples(num_seeds: int, count: int, rng: np.random.Generator) -> np.ndarray:
  """``[count, num_seeds]`` seed indices drawn with replacement."""
  return rng.integers(0, num_seeds, size=(count, num_seeds))


def gamma_star(gammas: Sequence[float], loss_SxG: np.ndarray,
               resamples_RxS: np.ndarray) -> tuple[Interval, np.ndarray]:
  """γ* of the seed-mean loss with its interval, and γ* of each resample ``[R]``."""
  point = best_gamma(gammas, loss_SxG.mean(0))
  draws_R = np.asarray([best_gamma(gammas, loss_SxG[rows].mean(0)) for rows in resamples_RxS])
  low, high = np.percentile(draws_R, [2.5, 97.5])
  return Interval(point, float(low), float(high)), draws_R


def _checked_threshold(threshold: float) -> float:
  if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
    raise TypeError(f"threshold must be a real number in (0, 1], got threshold={threshold!r}")
  if not 0.0 < threshold <= 1.0:
    raise ValueError(f"threshold must be an accuracy in (0, 1], got threshold={threshold}")
  return float(threshold)


def upper_edge(gammas: Sequence[float], accuracy_G: np.ndarray,
               threshold: float = ACCURACY_THRESHOLD) -> float:
  """The largest γ whose accuracy reaches ``threshold``, interpolated in log γ towards the next
  grid γ (see the module docstring); NaN when no γ reaches it."""
  threshold = _checked_threshold(threshold)
  gammas = np.asarray(gammas, np.float64)
  accuracy_G = np.asarray(accuracy_G, np.float64)
  if accuracy_G.shape != gammas.shape:
    raise ValueError(f"accuracy_G must hold one accuracy per γ, shape {gammas.shape}, got "
                     f"shape {accuracy_G.shape}")
  reached = np.flatnonzero(accuracy_G >= threshold)
  if reached.size == 0:
    return float("nan")
  i = int(reached[-1])
  if i == len(gammas) - 1 or gammas[i] == 0.0:
    return float(gammas[i])
  u = np.log(gammas[i:i + 2])
  above, below = accuracy_G[i], accuracy_G[i + 1]
  return float(np.exp(u[0] + (above - threshold) / (above - below) * (u[1] - u[0])))


def upper_edge_interval(gammas: Sequence[float], accuracy_SxG: np.ndarray,
                        resamples_RxS: np.ndarray, threshold: float = ACCURACY_THRESHOLD
                        ) -> tuple[Interval, np.ndarray]:
  """The upper edge of the seed-mean accuracy with its interval, and the edge of each resample
  ``[R]`` (NaN where none reaches ``threshold``; such resamples count as 0 in the bounds)."""
  accuracy_SxG = np.asarray(accuracy_SxG, np.float64)
  if accuracy_SxG.ndim != 2:
    raise ValueError(f"accuracy_SxG must be [seeds, gammas], got shape {accuracy_SxG.shape}")
  point = upper_edge(gammas, accuracy_SxG.mean(0), threshold)
  draws_R = np.asarray([upper_edge(gammas, accuracy_SxG[rows].mean(0), threshold)
                        for rows in resamples_RxS])
  low, high = np.percentile(np.nan_to_num(draws_R, nan=0.0), [2.5, 97.5])
  return Interval(point, float(low), float(high)), draws_R


def _fit_log_log(depths: np.ndarray, gamma_star_N: np.ndarray) -> tuple[float, float] | None:
  keep = gamma_star_N > 0
  if keep.sum() < 2:
    return None
  b, log_a = np.polyfit(np.log(depths[keep]), np.log(gamma_star_N[keep]), 1)
  return float(np.exp(log_a)), float(b)


def fit_power_law(depths: Sequence[int], gamma_star_N: np.ndarray,
                  draws_NxR: np.ndarray) -> PowerLawFit:
  """The fit on the point estimates, with intervals from the resamples (depth by depth)."""
  depths_N = np.asarray(depths, np.float64)
  point = _fit_log_log(depths_N, np.asarray(gamma_star_N, np.float64))
  fits = [_fit_log_log(depths_N, draws_NxR[:, r]) for r in range(draws_NxR.shape[1])]
  fits = np.asarray([f for f in fits if f is not None]).reshape(-1, 2)
  nan = Interval(float("nan"), float("nan"), float("nan"))

  def interval(value: float, column: np.ndarray) -> Interval:
    if column.size == 0:
      return Interval(value, float("nan"), float("nan"))
    low, high = np.percentile(column, [2.5, 97.5])
    return Interval(value, float(low), float(high))

  used = tuple(int(n) for n, g in zip(depths, gamma_star_N) if g > 0)
  fraction = fits.shape[0] / max(draws_NxR.shape[1], 1)
  if point is None:
    return PowerLawFit(nan, nan, used, fraction)
  return PowerLawFit(interval(point[0], fits[:, 0]), interval(point[1], fits[:, 1]), used,
                     fraction)


def verdict(gamma_star_by_depth: dict[int, Interval], fit: PowerLawFit, paper_a: float,
            paper_b: float) -> tuple[str, str]:
  """``(word, reason)``: "reproduced" when every depth's interval holds the paper's γ*(N) and
  the fitted intervals hold a and b; "refuted" when most depths' intervals exclude it;
  otherwise "undetermined"."""
  outside = [n for n, interval in gamma_star_by_depth.items()
             if not interval.contains(paper_a * n ** paper_b)]
  described = ", ".join(
      f"N={n}: {i.value:.2f} [{i.low:.2f}, {i.high:.2f}] vs {paper_a * n ** paper_b:.2f}"
      for n, i in gamma_star_by_depth.items())
  fit_holds = fit.a.contains(paper_a) and fit.b.contains(paper_b)
  if not outside and fit_holds:
    return "reproduced", f"every depth's interval holds the paper's γ*(N) ({described})"
  if len(outside) > len(gamma_star_by_depth) / 2:
    return "refuted", (f"the paper's γ*(N) lies outside the interval at depths {outside} "
                       f"({described})")
  return "undetermined", (f"the intervals hold the paper's γ*(N) at some depths only or the "
                          f"fit's intervals are wide ({described})")


def upper_edge_verdict(edge_by_depth: dict[int, Interval], fit: PowerLawFit, paper_a: float,
                       paper_b: float, threshold: float = ACCURACY_THRESHOLD) -> tuple[str, str]:
  """``verdict`` on the depths that have an upper edge; the depths where no γ reaches
  ``threshold`` are named in the reason, and with none left the word is "undetermined"."""
  missing = [n for n, interval in edge_by_depth.items() if np.isnan(interval.value)]
  defined = {n: i for n, i in edge_by_depth.items() if not np.isnan(i.value)}
  if not defined:
    return "undetermined", f"no γ reaches {threshold:.0%} held-out accuracy at any depth"
  word, reason = verdict(defined, fit, paper_a, paper_b)
  if missing:
    reason += f"; no γ reaches {threshold:.0%} at depths {missing}, left out"
  return word, reason


def _fit_json(fit: PowerLawFit) -> dict:
  return {"a": fit.a._asdict(), "b": fit.b._asdict(), "depths_used": fit.depths_used,
          "resamples_fitted": fit.resamples_fitted}


def _learned_row(start: dict) -> dict:
  """The seed means of one start's learned-γ members: γ overall and per layer, loss, accuracy."""
  return {"init": start["init"], "gamma_mean": float(np.mean(start["gamma"])),
          "gamma_per_layer": np.mean(start["gamma"], axis=(0, 2)).tolist(),
          "loss_mean": float(np.mean(start["loss"])),
          "accuracy_mean": float(np.mean(start["accuracy"]))}


def summarise(config: ExperimentConfig, units: dict[str, dict],
              threshold: float = ACCURACY_THRESHOLD) -> dict[str, dict]:
  """Per task, from ``units`` (by unit name: the grid's and the learned members' losses and
  accuracies per seed): per depth γ* and the upper edge at ``threshold`` with their intervals
  and, per shear and start, the learned γ; for γ* its fit and verdict (``fit``, ``verdict``, ``reason``) and for the
  upper edge the same under ``upper_edge``."""
  threshold = _checked_threshold(threshold)
  sweep = config.sweep
  rng = np.random.default_rng(0)
  resamples = seed_resamples(sweep.seeds, sweep.bootstrap, rng)
  tasks = {}
  for task_name, _ in config.chosen_tasks():
    by_depth, draws, edges, edge_draws, rows = {}, [], {}, [], {}
    for name, _, _, depth in (u for u in config.units() if u[1] == task_name):
      unit = units[name]
      loss_SxG = np.asarray(unit["grid_loss"])
      accuracy_SxG = np.asarray(unit["grid_accuracy"])
      interval, draws_R = gamma_star(sweep.gammas, loss_SxG, resamples)
      by_depth[depth] = interval
      draws.append(draws_R)
      edges[depth], edge_draws_R = upper_edge_interval(sweep.gammas, accuracy_SxG, resamples,
                                                       threshold)
      edge_draws.append(edge_draws_R)
      best = int(np.argmin(loss_SxG.mean(0)))
      rows[depth] = {
          "gamma_star": interval._asdict(), "paper_gamma_star": PAPER_A * depth ** PAPER_B,
          "upper_edge": edges[depth]._asdict(),
          "upper_edge_at_grid_top": bool(accuracy_SxG.mean(0)[-1] >= threshold),
          "grid_loss_mean": loss_SxG.mean(0).tolist(),
          "grid_accuracy_mean": accuracy_SxG.mean(0).tolist(),
          "best_grid_gamma": sweep.gammas[best],
          **{shear: [_learned_row(start) for start in unit[shear]] for shear in SHEARS}}
    star_N = np.asarray([by_depth[d].value for d in sweep.depths])
    fit = fit_power_law(sweep.depths, star_N, np.stack(draws))
    word, reason = verdict(by_depth, fit, PAPER_A, PAPER_B)
    edge_fit = fit_power_law(sweep.depths, np.asarray([edges[d].value for d in sweep.depths]),
                             np.stack(edge_draws))
    edge_word, edge_reason = upper_edge_verdict(edges, edge_fit, PAPER_A, PAPER_B, threshold)
    tasks[task_name] = {"depths": rows, "fit": _fit_json(fit), "verdict": word,
                        "reason": reason,
                        "upper_edge": {"threshold": threshold, "fit": _fit_json(edge_fit),
                                       "verdict": edge_word, "reason": edge_reason}}
  return tasks
