"""The flux-routing benchmark in its tiny mode: the forced decisions hold, every routing is timed,
and the model without the router decodes, with and without a window, and the table is printed."""

import pytest

from momentum_jax.experiments.bench import flux_routing


@pytest.mark.slow
def test_bench_flux_routing_tiny(capfd):
  results = flux_routing.main(["--tiny", "--repeats", "1"])
  assert set(results) == {"full", "half", "sparse", "softmax", "window"}
  for routing in ("full", "half", "sparse"):
    assert results[routing]["prefill"] > 0 and results[routing]["prefill_speedup"] > 0
  for figures in results.values():
    assert figures["decode"] > 0 and figures["decode_speedup"] > 0
  assert results["full"]["prefill_speedup"] == results["full"]["decode_speedup"] == 1.0
  out = capfd.readouterr().out
  assert "context 64, window 8" in out
  assert "1/2" in out and "2/2" in out and "no router" in out and "8-window" in out and "decoding steps" in out
