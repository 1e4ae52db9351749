"""The kernel benchmark in its tiny CPU configuration (kernels in interpret mode, cuDNN skipped),
so that it is known to work before a GPU run; and its FLOP count."""

from momentum_jax.experiments import bench_kernels


def test_causal_attention_flops():
  # B = 3, N = 5, T = 2, H = 7: half of the 4·B·N·T²·H FLOPs of full attention.
  forward = 4 * 3 * 5 * 2**2 * 7 / 2
  assert bench_kernels.causal_attention_flops(3, 5, 2, 7, "fwd") == forward
  assert bench_kernels.causal_attention_flops(3, 5, 2, 7, "fwd+bwd") == 3.5 * forward


def test_bench_kernels_tiny(capsys):
  result = bench_kernels.main(["--tiny"])
  assert set(result["skipped"]) == {"cudnn"}
  for mode in bench_kernels.MODES:
    row = result["results"][mode][64]
    assert set(row["seconds"]) == {"momentum", "plain", "xla", "lightning"}
    assert all(seconds > 0 for seconds in row["seconds"].values())
    assert set(row["tflops"]) == {"momentum", "plain", "xla"}
  printed = capsys.readouterr().out
  assert "skipped cudnn" in printed and "fwd+bwd" in printed
