"""ALiBi slopes (Press et al., "Train Short, Test Long", arXiv 2108.12409): the per-head decay
rates of ALiBi biases and of Lightning attention's default decay."""

from __future__ import annotations

import math

import numpy as np


def alibi_slopes(heads: int) -> np.ndarray:
  """ALiBi slopes: 2^(−8i/N), i = 1..N, for N a power of two; otherwise those of the nearest
  smaller power of two followed by every other slope of the next larger one (Press et al.)."""
  def power_of_two(n: int) -> list[float]:
    return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]

  below = 2 ** int(math.floor(math.log2(heads)))
  slopes = power_of_two(below)
  if below != heads:
    slopes += power_of_two(2 * below)[0::2][: heads - below]
  return np.asarray(slopes, np.float32)
