"""Model FLOPs per token against hand counts and the parameters of real models; the peak FLOP/s
table on the device-kind strings JAX reports; tokens/s and MFU."""

import jax
import pytest
from flax import nnx

from momentum_jax.nn import Dense, Transformer, TransformerConfig
from momentum_jax.train.flops import (
    matmul_params, model_flops_per_token, peak_flops_for_kind, peak_flops_per_second,
    throughput_metrics,
)

# D=32, N=K=4, H=8, no MLP, one layer, tied: q,k,v,o 4·32·32 = 4096, output projection 32·64.
SMALL = TransformerConfig(vocab_size=64, context_len=16, d_model=32, num_heads=4)
# D=64, N=8, K=2, H=8, F=256, three layers, untied: per layer 2·64·64 + 2·64·16 + 2·64·256
# = 43008, output projection 64·100.
GQA = TransformerConfig(vocab_size=100, context_len=32, num_layers=3, d_model=64, num_heads=8,
                        num_kv_heads=2, mlp_dim=256, tie_embeddings=False)


def test_hand_counts():
  assert matmul_params(SMALL) == 4096 + 2048
  assert model_flops_per_token(SMALL, 16) == 6 * 6144 + 12 * 1 * 16 * 32
  assert matmul_params(GQA) == 3 * 43008 + 6400
  assert model_flops_per_token(GQA, 32) == 6 * 135424 + 12 * 3 * 32 * 64


def _matmul_params_of(model: Transformer) -> int:
  """Kernel entries of every dense layer of ``model``, plus the embedding table when it is tied
  (``embed.attend`` is then the output projection)."""
  kernels = sum(node.kernel[...].size for _, node in nnx.iter_graph(model)
                if isinstance(node, Dense))
  tied = model.embed.embedding[...].size if model.config.tie_embeddings else 0
  return kernels + tied


@pytest.mark.parametrize("config", [
    SMALL,
    GQA,
    TransformerConfig(vocab_size=48, context_len=8, d_model=32, num_heads=4, head_dim=6,
                      num_kv_heads=2, gate="elementwise"),
    TransformerConfig(vocab_size=48, context_len=8, d_model=32, num_heads=4, gate="headwise"),
    TransformerConfig(vocab_size=48, context_len=8, d_model=32, num_heads=6, head_dim=4,
                      moh=True, moh_shared_heads=2, moh_top_k=2),
    TransformerConfig(vocab_size=48, context_len=8, d_model=32, num_heads=4, moh=True,
                      moh_shared_heads=1),
    TransformerConfig(vocab_size=48, context_len=8, d_model=32, num_heads=4, moh=True),
    TransformerConfig(vocab_size=48, context_len=8, d_model=32, num_heads=4, attention="affine"),
    TransformerConfig(vocab_size=48, context_len=8, d_model=32, num_heads=4, flux_router=True,
                      flux_window=4, mlp_dim=64, num_layers=2),
], ids=["small", "gqa_mlp_untied", "gate_elementwise", "gate_headwise", "moh_shared",
        "moh_one_shared", "moh_routed", "affine", "flux"])
def test_matmul_params_match_the_dense_layers_of_a_real_model(config):
  model = Transformer(config, rngs=nnx.Rngs(0))
  n = _matmul_params_of(model)
  assert matmul_params(config) == n
  seq_len = config.context_len
  d_attn = config.num_heads * config.head_dim
  assert model_flops_per_token(config, seq_len) == 6 * n + 12 * config.num_layers * seq_len * d_attn


def test_seq_len_must_be_a_positive_int():
  with pytest.raises(ValueError, match="seq_len must be a positive int, got seq_len=0"):
    model_flops_per_token(SMALL, 0)


@pytest.mark.parametrize("kind, dtype, peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.5e12),
    ("NVIDIA H100 80GB HBM3", "float32", 494.5e12),
    ("NVIDIA H100 PCIe", "bfloat16", 756.5e12),
    ("NVIDIA H200", "bfloat16", 989.5e12),
    ("NVIDIA H200", "float16", 989.5e12),
    ("NVIDIA A100-SXM4-40GB", "bfloat16", 312e12),
    ("NVIDIA A100-SXM4-80GB", "float32", 156e12),
    ("NVIDIA A100-PCIE-40GB", "bfloat16", 312e12),
    ("NVIDIA A100 80GB PCIe", "float16", 312e12),
    ("TPU v4", "bfloat16", 275e12),
    ("TPU v5 lite", "bfloat16", 197e12),
    ("TPU v5e", "float32", 197e12),
    ("TPU v5", "bfloat16", 459e12),
    ("TPU v5p", "bfloat16", 459e12),
    ("TPU v6 lite", "bfloat16", 918e12),
    # Kinds and dtypes the table does not hold: no peak, so no MFU.
    ("TPU v4 lite", "bfloat16", None),
    ("TPU v5 lite", "float16", None),
    ("NVIDIA H100 NVL", "bfloat16", None),
    ("NVIDIA H200 NVL", "bfloat16", None),
    ("NVIDIA GeForce RTX 4090", "bfloat16", None),
    ("cpu", "float32", None),
])
def test_peak_by_device_kind(kind, dtype, peak):
  assert peak_flops_for_kind(kind, dtype) == peak


def test_the_cpu_has_no_peak():
  cpu = jax.devices("cpu")[0]
  assert peak_flops_per_second(cpu, "float32") is None
  assert peak_flops_per_second(cpu, "bfloat16") is None


def test_unknown_dtype_raises():
  with pytest.raises(ValueError, match=r"dtype must be one of .*, got dtype='float64'"):
    peak_flops_for_kind("NVIDIA H200", "float64")


def test_throughput_and_mfu():
  metrics = throughput_metrics(tokens=4096, seconds=2.0, flops_per_token=1e9, peak=1e12,
                               num_devices=4)
  assert metrics == {"tokens_per_second": 2048.0, "model_flops_per_second": 2048e9,
                     "mfu": 2048e9 / 4e12}


def test_no_mfu_without_a_peak():
  metrics = throughput_metrics(tokens=10, seconds=0.5, flops_per_token=3.0, peak=None,
                               num_devices=1)
  assert metrics == {"tokens_per_second": 20.0, "model_flops_per_second": 60.0}


@pytest.mark.parametrize("kwargs, match", [
    ({"seconds": 0.0}, "seconds must be > 0, got seconds=0.0"),
    ({"seconds": -1.0}, "seconds must be > 0, got seconds=-1.0"),
    ({"tokens": 0}, "tokens must be > 0, got tokens=0"),
    ({"num_devices": 0}, "num_devices must be > 0, got num_devices=0"),
    ({"peak": 0.0}, "peak must be None or > 0, got peak=0.0"),
])
def test_bad_arguments_raise_naming_them(kwargs, match):
  args = dict(tokens=10, seconds=1.0, flops_per_token=1.0, peak=None, num_devices=1) | kwargs
  with pytest.raises(ValueError, match=match):
    throughput_metrics(**args)
