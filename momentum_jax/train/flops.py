"""Model FLOPs per token, peak FLOP/s by device kind, and tokens/s with model-FLOPs utilisation.

Model-FLOPs utilisation (MFU, Chowdhery et al. 2022, "PaLM", arXiv 2204.02311, appendix B) is the
throughput the model's own arithmetic would need, divided by the hardware's peak:

    MFU = tokens/s · (6·N + 12·L·T·d_attn) / (peak FLOP/s per device · devices),

counting what the model needs, not what the program runs: rematerialisation, padding and the
optimizer's update are not in the numerator. MFU is reported only when the device's peak is known
(:func:`peak_flops_per_second` gives None on the CPU and on unknown accelerators).
"""

from __future__ import annotations

import re

import jax

from momentum_jax.attention import get_attention
from momentum_jax.nn import TransformerConfig

_DTYPES = ("bfloat16", "float16", "float32")


def matmul_params(config: TransformerConfig) -> int:
  """Parameters of the model's matrix multiplications: the N of the PaLM formula.

  Per layer, with D = d_model, N heads of width H, K key/value heads and F = mlp_dim:

      q, o: 2·D·N·H;  k, v (grouped-query): 2·D·K·H;  MLP: 2·D·F (when F > 0);
      output gate: D·N·H (``gate="elementwise"``) or D·N (``"headwise"``);
      Mixture-of-Head router: D·(N − h_s) routed, D·h_s shared (when h_s > 1), D·2 balance
        (when both kinds of heads exist);
      α projection of ``attention="affine"``: D·N;  flux router: D·2;

  plus the output projection D·V, which the tied embedding also is (``embed.attend``). The
  embedding lookup (a gather), the norms, biases and the variants' per-head constants are not
  matrix multiplications and are left out.
  """
  d, n, k, h = config.d_model, config.num_heads, config.num_kv_heads, config.head_dim
  per_layer = 2 * d * n * h + 2 * d * k * h + 2 * d * config.mlp_dim
  if config.gate != "none":
    per_layer += d * n * (h if config.gate == "elementwise" else 1)
  if config.moh:
    shared = config.moh_shared_heads
    routed = n - shared
    per_layer += d * routed + (d * shared if shared > 1 else 0)
    per_layer += 2 * d if routed and shared else 0
  if config.flux_router:
    per_layer += 2 * d
  affine_layers = sum(get_attention(config.layer(i).attention).token_params == "affine"
                      for i in range(config.num_layers))
  return config.num_layers * per_layer + affine_layers * d * n + d * config.vocab_size


def model_flops_per_token(config: TransformerConfig, seq_len: int) -> float:
  """Training FLOPs per token of one forward and backward pass, PaLM's appendix B convention:

      6·N + 12·L·T·d_attn,   d_attn = num_heads · head_dim,

  with N = :func:`matmul_params` (2 FLOPs per parameter forward, 4 backward) and T = ``seq_len``.
  The second term is the attention's q·kᵀ and pattern·v products: 4·T·d_attn forward per layer
  and token, three times that with the backward pass. As in PaLM, every query counts all T keys:
  neither the causal half nor a sliding window shortens T, so the count is the same for every
  attention variant. Variant-specific work (e.g. momentum's shear of q and k) and the flux
  router's second, windowed attention branch are not counted.
  """
  if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
    raise ValueError(f"seq_len must be a positive int, got seq_len={seq_len!r}")
  d_attn = config.num_heads * config.head_dim
  return float(6 * matmul_params(config) + 12 * config.num_layers * seq_len * d_attn)


# Dense (no structured sparsity) peak FLOP/s per JAX device, by ``device.device_kind`` (matched
# whole). "float32" is the peak for float32 inputs at JAX's default matmul precision, which
# computes them as TF32 on these GPUs and as one bfloat16 pass on TPUs.
#   NVIDIA: half the "with sparsity" Tensor Core figures of the datasheets "NVIDIA H100 Tensor Core
#     GPU" (SXM: BF16/FP16 1,979, TF32 989 TFLOPS; PCIe: 1,513 and 756), "NVIDIA H200 Tensor Core
#     GPU" (SXM: as the H100 SXM) and "NVIDIA A100 Tensor Core GPU" (BF16/FP16 312, TF32 156
#     TFLOPS dense). The NVL cards (other clocks) are not listed.
#   Google Cloud TPU system architecture pages, "peak compute per chip" in bf16: v4 275,
#     v5e 197, v5p 459, v6e (Trillium) 918 TFLOPS; a v4-and-later JAX device is one chip. TPUs
#     have no float16 matrix unit, so float16 is not listed.
_H100_SXM = {"bfloat16": 989.5e12, "float16": 989.5e12, "float32": 494.5e12}
_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"NVIDIA H100(?: 80GB HBM3)?", _H100_SXM),
    (r"NVIDIA H100 PCIe", {"bfloat16": 756.5e12, "float16": 756.5e12, "float32": 378e12}),
    (r"NVIDIA H200", _H100_SXM),
    (r"NVIDIA A100(?:[- ].*)?", {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12}),
    (r"TPU v4", {"bfloat16": 275e12, "float32": 275e12}),
    (r"TPU v5(?: lite|e)", {"bfloat16": 197e12, "float32": 197e12}),
    (r"TPU v5p?", {"bfloat16": 459e12, "float32": 459e12}),
    (r"TPU v6(?: lite|e)", {"bfloat16": 918e12, "float32": 918e12}),
)


def peak_flops_for_kind(device_kind: str, dtype: str) -> float | None:
  """Dense peak FLOP/s of one device of kind ``device_kind`` (as ``jax.Device.device_kind``
  spells it, e.g. "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "TPU v5 lite") for matmuls
  with ``dtype`` inputs; None for a kind or dtype the table does not hold (the CPU included)."""
  if dtype not in _DTYPES:
    raise ValueError(f"dtype must be one of {_DTYPES}, got dtype={dtype!r}")
  for pattern, peaks in _PEAKS:
    if re.fullmatch(pattern, device_kind):
      return peaks.get(dtype)
  return None


def peak_flops_per_second(device: jax.Device, dtype: str) -> float | None:
  """Dense peak FLOP/s of ``device`` for ``dtype`` matmuls (:func:`peak_flops_for_kind`);
  None for the CPU and for unknown kinds, so that MFU is left out rather than guessed."""
  return peak_flops_for_kind(device.device_kind, dtype)


def throughput_metrics(tokens: int, seconds: float, flops_per_token: float, peak: float | None,
                       num_devices: int) -> dict[str, float]:
  """``tokens_per_second``, ``model_flops_per_second`` and, when ``peak`` is known, ``mfu``.

  ``tokens`` is the number of tokens all ``num_devices`` devices processed in ``seconds``;

      tokens_per_second = tokens / seconds,
      model_flops_per_second = tokens_per_second · flops_per_token,
      mfu = model_flops_per_second / (peak · num_devices).
  """
  for name, value in (("tokens", tokens), ("seconds", seconds),
                      ("flops_per_token", flops_per_token), ("num_devices", num_devices)):
    if not value > 0:
      raise ValueError(f"{name} must be > 0, got {name}={value!r}")
  if peak is not None and not peak > 0:
    raise ValueError(f"peak must be None or > 0, got peak={peak!r}")
  tokens_per_second = tokens / seconds
  metrics = {"tokens_per_second": tokens_per_second,
             "model_flops_per_second": tokens_per_second * flops_per_token}
  if peak is not None:
    metrics["mfu"] = metrics["model_flops_per_second"] / (peak * num_devices)
  return metrics
