"""Kernel dispatch: ``implementation`` None / "xla" / "pallas" on the CPU, where the default is
the pure XLA form and "pallas" runs the kernel in interpret mode and matches it (outputs and every
gradient), for lightning, softmax and momentum attention."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentum_jax.attention import lightning_attention, momentum_attention, softmax_attention
from momentum_jax.attention import dispatch
from momentum_jax.kernels.backend import default_interpret
from momentum_jax.kernels.flash_attention import flash_attention
from momentum_jax.kernels.lightning import lightning_attention_kernel

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def inputs(seed):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  ids = jnp.asarray(np.repeat([[0, 1, 1]], [20, 10, 7], axis=1))
  return normal(1, 37, 4, 24), normal(1, 37, 2, 24), normal(1, 37, 2, 24), ids


def test_check_implementation():
  for implementation in (None, "xla", "pallas"):
    dispatch.check_implementation(implementation)
  with pytest.raises(ValueError, match="implementation='cudnn'"):
    dispatch.check_implementation("cudnn")


def test_cpu_defaults():
  assert jax.default_backend() == "cpu"
  for kernel in dispatch.DEFAULT_PLATFORMS:
    assert not dispatch.wants_kernel(None, kernel)
    assert not dispatch.wants_kernel("xla", kernel)
    assert dispatch.wants_kernel("pallas", kernel)
  assert default_interpret()


KERNELS = {
    "lightning": lightning_attention_kernel,
    "flash": flash_attention,
    "flash_shear": flash_attention,
}

# (kernel, head dim, learned inputs, static options): the options each dispatcher passes its
# kernel (lightning: segments and decay; softmax: causal, window, segment ids, sinks; momentum:
# the same plus γ and its boundary), at power-of-two and padded head dims.
LOWERING_CASES = [
    ("lightning", 40, ("decay",), dict(segment_ids=True)),
    ("flash", 64, (), {}),
    ("flash", 40, ("sinks",), dict(window=9, segment_ids=True)),
    ("flash", 72, (), dict(causal=False)),
    ("flash_shear", 64, ("gamma",), {}),
    ("flash_shear", 40, ("gamma", "sinks"), dict(window=9, boundary="replicate")),
    ("flash_shear", 72, ("gamma",), dict(segment_ids=True, causal=False)),
]


def test_lowering_cases_cover_every_dispatched_kernel():
  assert {case[0] for case in LOWERING_CASES} == set(dispatch.DEFAULT_PLATFORMS)


@pytest.mark.parametrize("kernel,head_dim,learned,static", LOWERING_CASES,
                         ids=[f"{c[0]}-h{c[1]}-{'-'.join([*c[2], *c[3]]) or 'plain'}"
                              for c in LOWERING_CASES])
def test_dispatched_kernels_lower_to_triton(kernel, head_dim, learned, static):
  """Each kernel the dispatcher can pick passes Pallas's Triton lowering,
  forward and backward (gradients w.r.t. q, k, v and the learned inputs), lowered for CUDA on
  the CPU: only the Triton IR is built, nothing is compiled or run."""
  seq, heads, kv_heads = 70, 4, 2
  array = lambda *shape, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dtype)
  args = {"q": array(1, seq, heads, head_dim), "k": array(1, seq, kv_heads, head_dim),
          "v": array(1, seq, kv_heads, head_dim)}
  shapes = {"decay": (heads,), "sinks": (heads,), "gamma": (kv_heads,)}
  args.update({name: array(*shapes[name], dtype=jnp.float32) for name in learned})
  if static.get("segment_ids"):
    static = dict(static, segment_ids=jnp.asarray(np.repeat([[0, 1, 2]], [30, 1, 39], axis=1)))

  def loss(args):
    args = dict(args)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    out = KERNELS[kernel](q, k, v, interpret=False, **args, **static)
    return jnp.sum(out.astype(jnp.float32))

  step = jax.jit(jax.value_and_grad(loss))
  text = step.trace(args).lower(lowering_platforms=("cuda",)).as_text()
  assert set(re.findall(r"custom_call @([\w$.]+)", text)) == {"__gpu$xla.gpu.triton"}
  assert text.count("__gpu$xla.gpu.triton") >= 3  # the forward kernel and both backward ones


FUNCTIONS = {
    "lightning": functools.partial(lightning_attention, block_size=16),
    "softmax": softmax_attention,
    "momentum": functools.partial(momentum_attention, gamma=0.5),
}


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("implementation,kernel", [(None, False), ("xla", False),
                                                   ("pallas", True)])
def test_runs_the_selected_form(name, implementation, kernel):
  q, k, v, ids = inputs(0)
  attend = functools.partial(FUNCTIONS[name], segment_ids=ids, implementation=implementation)
  assert ("pallas_call" in str(jax.make_jaxpr(attend)(q, k, v))) == kernel


def pallas_and_pure(attend, params, seed):
  """Outputs and gradients w.r.t. q, k, v and ``params`` with "pallas" and with the default."""
  q, k, v, ids = inputs(seed)
  cotangent = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(q.shape), jnp.float32)

  def run(implementation):
    def loss(q, k, v, params):
      out = attend(q, k, v, segment_ids=ids, implementation=implementation, **params)
      return jnp.sum(out * cotangent), out
    return jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, params)

  (_, out), grads = run("pallas")
  (_, expected_out), expected_grads = run(None)
  return (out, *jax.tree.leaves(grads)), (expected_out, *jax.tree.leaves(expected_grads))


def test_lightning_pallas_on_cpu_matches_the_pure_form():
  attend = functools.partial(lightning_attention, scale=0.3, block_size=16)
  got, want = pallas_and_pure(attend, {"decay": jnp.asarray([0.05, 0.1, 0.2, 0.4])}, 1)
  assert len(got) == 5
  for a, b in zip(got, want):
    assert rel_err(a, b) <= 1e-5


def test_softmax_and_momentum_pallas_on_cpu_match_the_pure_form():
  sinks = jnp.asarray([0.5, -1.0, 0.0, 2.0])
  got, want = pallas_and_pure(functools.partial(softmax_attention, window=9), {"sinks": sinks}, 4)
  got_m, want_m = pallas_and_pure(momentum_attention, {"gamma": jnp.asarray([0.3, 0.7])}, 6)
  assert len(got) == len(got_m) == 5
  for a, b in zip(got + got_m, want + want_m):
    assert rel_err(a, b) <= 1e-5


def test_lightning_rejects_bad_implementations():
  q, k, v, _ = inputs(3)
  with pytest.raises(ValueError, match="implementation='triton'"):
    lightning_attention(q, k, v, implementation="triton")
  with pytest.raises(ValueError, match="block_sizes.block"):
    lightning_attention(q, k, v, block_size=5, implementation="pallas")
  pure = functools.partial(lightning_attention, block_size=5)
  assert jax.eval_shape(pure, q, k, v).shape == q.shape
  bias = jnp.zeros((1, 4, 37, 37))
  for attend in (softmax_attention, functools.partial(momentum_attention, gamma=0.5)):
    with pytest.raises(ValueError, match="implementation='pallas'.*bias"):
      attend(q, k, v, bias=bias, implementation="pallas")
    with pytest.raises(ValueError, match="implementation='cuda'"):
      attend(q, k, v, implementation="cuda")
    assert jax.eval_shape(functools.partial(attend, bias=bias), q, k, v).shape == q.shape
