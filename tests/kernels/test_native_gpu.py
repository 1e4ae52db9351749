"""The kernels compiled natively (Pallas → Triton) and run on a GPU, against their references:
outputs and every gradient, at the awkward sizes of the interpret-mode tests; the attention
functions with ``implementation="pallas"`` against ``"xla"``; and the default choice on the GPU
(Lightning's kernel; the XLA form for softmax and momentum, which measured faster).

Skipped without a GPU. Each comparison prints its errors (``pytest -s``) so that a GPU run
records them. Tolerances: bfloat16 inputs as in interpret mode (1e-2). The flash kernel's float32
products run at the GPU's default dot precision (TF32 on Ampere and later: 10 mantissa bits,
unit roundoff 2⁻¹¹ ≈ 4.9e-4), so its float32 cases are held to 5e-3; the Lightning kernel asks
for ``Precision.HIGHEST`` in float32 and is held to 1e-4.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_flash_attention as flash_tests
import test_lightning_kernel as lightning_tests

import momentum_jax.attention as attn
from momentum_jax.attention.lightning import lightning_attention
from momentum_jax.attention.lightning import lightning_attention_reference
from momentum_jax.kernels.flash_attention import BlockSizes, flash_attention
from momentum_jax.kernels.lightning import lightning_attention_kernel

pytestmark = [pytest.mark.kernels, pytest.mark.skipif(
    jax.default_backend() != "gpu", reason="needs a GPU: the kernels compile natively only there")]

FLASH_TOL = {jnp.float32: 5e-3, jnp.bfloat16: 1e-2}
LIGHTNING_TOL = {jnp.float32: 1e-4, jnp.bfloat16: 1e-2}

# A mask_mod that indexes an array (segment_mask) has no Triton lowering (no gather): that case
# stays an interpret-mode test.
FLASH_CASES = [case for case in flash_tests.CASES if case[0] != "batch2-block-mask-per-head"]
FLASH_CASES += [
    (f"triton-{name}", 1, seq_q, seq_k, heads, kv_heads, head_dim, dtype,
     static if "block_mask" in static else dict(static, block_sizes=BlockSizes(32, 16)), extras)
    for name, seq_q, seq_k, heads, kv_heads, head_dim, extras, static in flash_tests.TRITON_CASES
    for dtype in (jnp.float32, jnp.bfloat16)
]


@pytest.mark.parametrize("case", FLASH_CASES, ids=[f"{c[0]}-{jnp.dtype(c[7]).name}"
                                                   for c in FLASH_CASES])
def test_flash_kernel_on_gpu_matches_float64_reference(case):
  name, batch, seq_q, seq_k, heads, kv_heads, head_dim, dtype, static, extras = case
  args, weights = flash_tests.make_inputs(name, batch, seq_q, seq_k, heads, kv_heads, head_dim,
                                          dtype, extras)
  kernel = functools.partial(flash_attention, interpret=False)
  loss = functools.partial(flash_tests.weighted_sum, kernel, static, weights)
  (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(args)
  with jax.enable_x64(True):
    args64 = {key: value.astype(jnp.float64) for key, value in args.items()}
    ref, ref_grads, magnitude_K = jax.jit(functools.partial(
        flash_tests.reference_and_gamma_magnitude, static=static))(args64, weights)

  errors = {"out": flash_tests.rel_err(out, ref)}
  errors.update({key: flash_tests.rel_err(grads[key], ref_grads[key])
                 for key in args if key != "gamma"})
  if "gamma" in args:
    errors["gamma"] = float(np.max(
        np.abs(np.asarray(grads["gamma"], np.float64) - np.asarray(ref_grads["gamma"]))
        / np.asarray(magnitude_K)))
  print(f"\n{name} {jnp.dtype(dtype).name}: " + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))
  assert out.dtype == dtype and out.shape == args["q_BxTxNxH"].shape
  assert all(err <= FLASH_TOL[dtype] for err in errors.values()), errors


@pytest.mark.parametrize("index", range(len(lightning_tests.CASES)),
                         ids=lambda i: str(lightning_tests.CASES[i][:8]))
def test_lightning_kernel_on_gpu_matches_reference(index):
  seq, head_dim, heads, kv_heads, segments, learned, scale, dtype, block_sizes = (
      lightning_tests.CASES[index])
  (q, k, v, cotangent), ids, decay = lightning_tests.make_case(index, seq, head_dim, heads,
                                                              kv_heads, segments)
  q, k, v = (jnp.asarray(x, dtype) for x in (q, k, v))
  kernel = functools.partial(lightning_attention_kernel, segment_ids=ids, scale=scale,
                             block_sizes=block_sizes, interpret=False)
  out, grads = jax.jit(functools.partial(lightning_tests.loss_and_grads, kernel,
                                         learned=learned))(q, k, v, cotangent, decay)
  reference = functools.partial(lightning_attention_reference, segment_ids=ids, scale=scale)
  with jax.default_matmul_precision("highest"):
    want_out, want_grads = jax.jit(functools.partial(
        lightning_tests.loss_and_grads, reference, learned=learned))(
            *(x.astype(jnp.float32) for x in (q, k, v)), cotangent, decay)

  names = ("out", "dq", "dk", "dv", "ddecay")[: 5 if learned else 4]
  errors = {name: lightning_tests.rel_err(got, want)
            for name, got, want in zip(names, (out, *grads), (want_out, *want_grads))}
  print(f"\nlightning case {index} {jnp.dtype(dtype).name}: "
        + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))
  assert out.dtype == dtype and out.shape == q.shape
  assert all(err <= LIGHTNING_TOL[dtype] for err in errors.values()), errors


@pytest.mark.parametrize("variant", ["softmax", "momentum"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pallas_dispatch_on_gpu_matches_xla_form(variant, dtype):
  """``implementation="pallas"`` (the flash kernel) matches ``"xla"`` on outputs and the q, k, v
  gradients (causal, GQA 8:2, T = 100, H = 72, window 40)."""
  rng = np.random.default_rng(7)
  q = jnp.asarray(rng.standard_normal((2, 100, 8, 72)), dtype)
  k, v = (jnp.asarray(rng.standard_normal((2, 100, 2, 72)), dtype) for _ in range(2))
  options = dict(causal=True, window=40)
  if variant == "momentum":
    options["gamma"] = 0.5
  attend = attn.momentum_attention if variant == "momentum" else attn.softmax_attention

  def loss(implementation, q, k, v):
    out = attend(q, k, v, implementation=implementation, **options)
    return jnp.sum(out.astype(jnp.float32) ** 2), out

  results = {}
  for implementation in ("pallas", "xla"):
    with jax.default_matmul_precision("highest"):
      (_, out), grads = jax.jit(jax.value_and_grad(
          functools.partial(loss, implementation), argnums=(0, 1, 2), has_aux=True))(q, k, v)
    results[implementation] = (out, *grads)
  errors = {name: flash_tests.rel_err(got, want) for name, got, want in
            zip(("out", "dq", "dk", "dv"), results["pallas"], results["xla"])}
  print(f"\ndispatch {variant} {jnp.dtype(dtype).name}: "
        + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))
  assert all(err <= FLASH_TOL[dtype] for err in errors.values()), errors


@pytest.mark.parametrize("implementation", [None, "pallas"])
def test_default_dispatch_on_gpu(implementation):
  """On the GPU the default runs Lightning's kernel and the XLA form of momentum attention;
  ``"pallas"`` runs the flash kernel."""
  q = jnp.zeros((1, 64, 4, 64), jnp.bfloat16)
  momentum = jax.jit(lambda q: attn.momentum_attention(
      q, q, q, causal=True, gamma=0.5, implementation=implementation))
  linear = jax.jit(lambda q: lightning_attention(q, q, q, implementation=implementation))
  assert ("flash_attention_forward" in momentum.lower(q).as_text()) == (
      implementation == "pallas")
  assert "lightning_forward" in linear.lower(q).as_text()
