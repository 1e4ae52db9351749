"""Every figure is written as a PNG from arrays and its path returned; bad shapes raise."""

import matplotlib
import numpy as np
import pytest
from matplotlib import image as mpimg

from momentum_jax.analysis import plots, spectral

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, expected):
  assert path == expected
  assert path.read_bytes()[:8] == PNG_MAGIC
  height, width = mpimg.imread(path).shape[:2]
  assert height > 100 and width > 100


def test_every_figure_writes_a_png(tmp_path):
  backend = matplotlib.get_backend()
  rng = np.random.default_rng(0)
  weights = rng.random((2, 3, 7, 7)) * np.tri(7)
  _assert_png(plots.plot_attention_patterns(weights, tmp_path / "sub" / "patterns.png"),
              tmp_path / "sub" / "patterns.png")
  _assert_png(plots.plot_head_scores(rng.random((2, 3)), tmp_path / "scores.png"),
              tmp_path / "scores.png")
  _assert_png(plots.plot_sink_heatmap(rng.random((2, 3)), str(tmp_path / "sinks.png")),
              tmp_path / "sinks.png")
  analytic = spectral.bode(spectral.shear_taps(0.5), num_points=33)
  _assert_png(plots.plot_bode(analytic.omega_W,
                              {"analytic": analytic.response_W,
                               "fitted": np.asarray(analytic.response_W) * 0.9},
                              tmp_path / "bode.png"), tmp_path / "bode.png")
  _assert_png(plots.plot_band_energies(["a", "b", "c"], [1.0, 2.0, 0.0], [3.0, 0.5, 0.0],
                                       tmp_path / "bands.png"), tmp_path / "bands.png")
  assert matplotlib.get_backend() == backend  # figures never touch the pyplot backend


def test_shapes_are_checked(tmp_path):
  with pytest.raises(ValueError, match=r"weights.shape=\(3, 7, 7\)"):
    plots.plot_attention_patterns(np.zeros((3, 7, 7)), tmp_path / "x.png")
  with pytest.raises(ValueError, match="layer_labels"):
    plots.plot_attention_patterns(np.zeros((2, 1, 3, 3)), tmp_path / "x.png", layer_labels=["a"])
  with pytest.raises(ValueError, match="values.shape"):
    plots.plot_head_scores(np.zeros(4), tmp_path / "x.png")
  with pytest.raises(ValueError, match="responses\\['h'\\]"):
    plots.plot_bode(np.linspace(0, np.pi, 5), {"h": np.ones(4)}, tmp_path / "x.png")
  with pytest.raises(ValueError, match="one entry per bar"):
    plots.plot_band_energies(["a"], [1.0, 2.0], [1.0, 2.0], tmp_path / "x.png")
  assert not (tmp_path / "x.png").exists()
