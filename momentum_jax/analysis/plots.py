"""Figures of the analysis tools, drawn from arrays and saved as PNG.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, so nothing depends on (or
changes) the global pyplot backend and plotting works headless. Every function writes one PNG and
returns its path. Inputs are arrays (NumPy or JAX): attention weights ``[L, N, T, S]``, per-head
scores ``[L, N]``, complex frequency responses ``[W]``, band energies.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PathLike = str | os.PathLike[str]


def _save(fig: Figure, path: PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=110)
  return path


def _as_array(name: str, x: ArrayLike, ndim: int) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != ndim:
    raise ValueError(f"{name} must have rank {ndim}, got {name}.shape={x.shape}")
  return x


def plot_attention_patterns(
    weights_LxNxTxS: ArrayLike, path: PathLike, *, title: str = "attention patterns",
    layer_labels: Sequence[str] | None = None,
) -> pathlib.Path:
  """A grid of attention maps, one row per layer and one column per head.

  Args:
    weights_LxNxTxS: attention weights of one example (or a batch mean), query t on the vertical
      axis and key s on the horizontal one, e.g. ``cache["blocks.0.attn.hook_pattern"][0]``
      stacked over layers.
    path: the PNG to write.
    title: figure title.
    layer_labels: one label per row (default ``layer 0``, ``layer 1``, ...).
  """
  weights = _as_array("weights", weights_LxNxTxS, 4)
  layers, heads = weights.shape[:2]
  labels = layer_labels or [f"layer {i}" for i in range(layers)]
  if len(labels) != layers:
    raise ValueError(f"layer_labels needs {layers} entries, got {len(labels)}")
  fig = Figure(figsize=(2.6 * heads + 0.8, 2.6 * layers + 0.6), layout="constrained")
  axes = fig.subplots(layers, heads, squeeze=False)
  for layer in range(layers):
    for head in range(heads):
      ax = axes[layer, head]
      image = ax.imshow(weights[layer, head], cmap="viridis", vmin=0.0, aspect="auto",
                        interpolation="nearest")
      ax.set_title(f"{labels[layer]}, head {head}", fontsize=8)
      if layer == layers - 1:
        ax.set_xlabel("key s", fontsize=7)
      if head == 0:
        ax.set_ylabel("query t", fontsize=7)
      ax.tick_params(labelsize=6)
  fig.colorbar(image, ax=axes, shrink=0.8)
  fig.suptitle(title)
  return _save(fig, path)


def _heatmap(values_LxN: ArrayLike, path: PathLike, title: str, label: str, fmt: str,
             vmin: float | None, vmax: float | None) -> pathlib.Path:
  values = _as_array("values", values_LxN, 2)
  layers, heads = values.shape
  fig = Figure(figsize=(1.0 + 0.8 * heads, 1.2 + 0.6 * layers))
  ax = fig.subplots()
  image = ax.imshow(values, cmap="magma", vmin=vmin, vmax=vmax, aspect="auto")
  for layer in range(layers):
    for head in range(heads):
      ax.text(head, layer, format(values[layer, head], fmt), ha="center", va="center",
              fontsize=7, color="cyan")
  ax.set_xticks(range(heads))
  ax.set_yticks(range(layers))
  ax.set_xlabel("head")
  ax.set_ylabel("layer")
  ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax, label=label)
  fig.tight_layout()
  return _save(fig, path)


def plot_head_scores(scores_LxN: ArrayLike, path: PathLike, *, title: str = "head scores",
                     label: str = "score") -> pathlib.Path:
  """Heatmap of one score per (layer, head), e.g. induction or previous-token scores in [0, 1]."""
  return _heatmap(scores_LxN, path, title, label, ".2f", None, None)


def plot_sink_heatmap(alpha_LxN: ArrayLike, path: PathLike, *, epsilon: float | None = 0.3,
                      title: str = "attention sink α (first token)") -> pathlib.Path:
  """Heatmap of the sink score α^{l,h}_k (mean attention on key k over queries t >= k) per
  (layer, head); with ``epsilon`` the title names the threshold of Sink_k^ε (Gu et al., arXiv
  2410.10781)."""
  if epsilon is not None:
    title = f"{title}, ε = {epsilon:g}"
  return _heatmap(alpha_LxN, path, title, "α", ".2f", 0.0, 1.0)


def plot_bode(omega_W: ArrayLike, responses: Mapping[str, ArrayLike], path: PathLike, *,
              title: str = "Bode plot") -> pathlib.Path:
  """Magnitude 20·log10|H| (dB) and unwrapped phase (degrees) against ω ∈ [0, π].

  Args:
    omega_W: angular frequencies ``[W]``.
    responses: label → complex response ``[W]`` (e.g. ``BodeResponse.response_W`` of an analytic
      shear or a fitted filter).
    path: the PNG to write.
    title: figure title.
  """
  omega = _as_array("omega", omega_W, 1)
  fig = Figure(figsize=(7, 6))
  mag_ax, phase_ax = fig.subplots(2, 1, sharex=True)
  for label, response in responses.items():
    response = _as_array(f"responses[{label!r}]", response, 1)
    if response.shape != omega.shape:
      raise ValueError(f"responses[{label!r}] must have the shape of omega {omega.shape}, got "
                       f"{response.shape}")
    magnitude = np.maximum(np.abs(response), np.finfo(np.float32).tiny)
    mag_ax.plot(omega, 20 * np.log10(magnitude), label=label)
    phase_ax.plot(omega, np.degrees(np.unwrap(np.angle(response))), label=label)
  mag_ax.set_ylabel("magnitude (dB)")
  phase_ax.set_ylabel("phase (degrees)")
  phase_ax.set_xlabel("ω (radians per step)")
  phase_ax.set_xlim(0, np.pi)
  for ax in (mag_ax, phase_ax):
    ax.grid(alpha=0.3)
  mag_ax.legend(fontsize=7)
  mag_ax.set_title(title)
  fig.tight_layout()
  return _save(fig, path)


def plot_band_energies(labels: Sequence[str], low_X: ArrayLike, high_X: ArrayLike,
                       path: PathLike, *,
                       title: str = "band energies", low_label: str = "low band (DC)",
                       high_label: str = "high band (AC)") -> pathlib.Path:
  """Stacked bars of the low- and high-band energy fractions, one bar per label.

  Args:
    labels: one name per bar (a head, a model, a RoPE pair).
    low_X, high_X: energies ``[X]`` below / above the cut-off (e.g. ``BandEnergies.low``).
    path: the PNG to write.
    title, low_label, high_label: figure title and legend entries.
  """
  low, high = _as_array("low", low_X, 1), _as_array("high", high_X, 1)
  if not len(labels) == low.shape[0] == high.shape[0]:
    raise ValueError(f"labels, low and high need one entry per bar, got {len(labels)}, "
                     f"low.shape={low.shape} and high.shape={high.shape}")
  total = np.maximum(low + high, np.finfo(np.float32).tiny)
  fig = Figure(figsize=(max(5.0, 0.45 * len(labels) + 2), 4))
  ax = fig.subplots()
  x = np.arange(len(labels))
  ax.bar(x, low / total, label=low_label, color="tab:blue")
  ax.bar(x, high / total, bottom=low / total, label=high_label, color="tab:orange")
  ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
  ax.set_ylabel("fraction of energy")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=7)
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  return _save(fig, path)
