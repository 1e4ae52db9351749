"""The kernel benchmark in its tiny CPU configuration (kernels in interpret mode, cuDNN skipped),
so that it is known to work before a GPU run; and its FLOP count."""

import pytest

from momentum_jax.experiments.bench import kernels as bench_kernels


def test_causal_attention_flops():
  # B = 3, N = 5, T = 2, H = 7: half of the 4·B·N·T²·H FLOPs of full attention.
  forward = 4 * 3 * 5 * 2**2 * 7 / 2
  assert bench_kernels.causal_attention_flops(3, 5, 2, 7, "fwd") == forward
  assert bench_kernels.causal_attention_flops(3, 5, 2, 7, "fwd+bwd") == 3.5 * forward


def test_summarize_and_format_row():
  seconds = {"dispatch": 0.625, "momentum": 2.0, "plain": 1.0, "cudnn": 0.5, "xla": 4.0,
             "lightning": 0.25}
  row = bench_kernels.summarize(seconds, flops=1e12)
  assert row["tflops"] == {"dispatch": 1.6, "momentum": 0.5, "plain": 1.0, "cudnn": 2.0,
                           "xla": 0.25}
  assert row["dispatch/cudnn"] == 0.8 and row["momentum/cudnn"] == 0.25
  assert row["cudnn/lightning"] == 2.0
  line = bench_kernels.format_row(4096, 4, "fwd+bwd", row)
  assert line.split() == ["fwd+bwd", "4096", "4", "1.6", "0.5", "1", "2", "0.25", "250",
                          "0.800", "0.250", "2.000"]
  partial = bench_kernels.summarize({"xla": 4.0}, flops=1e12)
  assert set(partial) == {"seconds", "tflops"}
  cells = bench_kernels.format_row(64, 1, "fwd", partial).split()[3:]
  assert cells == ["-", "-", "-", "-", "0.25", "-", "-", "-", "-"]


@pytest.mark.kernels
def test_bench_kernels_tiny(capsys):
  result = bench_kernels.main(["--tiny"])
  assert set(result["skipped"]) == {"cudnn"}
  for mode in bench_kernels.MODES:
    row = result["results"][mode][64]
    assert set(row["seconds"]) == {"dispatch", "momentum", "plain", "xla", "lightning"}
    assert all(seconds > 0 for seconds in row["seconds"].values())
    assert set(row["tflops"]) == {"dispatch", "momentum", "plain", "xla"}
  printed = capsys.readouterr().out
  assert "skipped cudnn" in printed and "fwd+bwd" in printed
