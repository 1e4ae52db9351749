"""Kernel dispatch: the softmax route table (``softmax_route``) for every option combination on
every backend; ``implementation`` None / "xla" / "cudnn" / "pallas" on the CPU, where the default
is the pure XLA form, "cudnn" is refused and "pallas" runs the kernel in interpret mode and
matches it (outputs and every gradient), for lightning, softmax and momentum attention; the GPU
default passes "cudnn" to ``jax.nn.dot_product_attention``; interpret mode off the GPU."""

import functools
import importlib
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentum_jax.attention import get_attention, momentum_attention, softmax_attention
from momentum_jax.attention import dispatch, splash
from momentum_jax.attention.flex import flex_attention
from momentum_jax.attention.lightning import lightning_attention
from momentum_jax.kernels.backend import default_interpret
from momentum_jax.kernels.flash_attention import flash_attention
from momentum_jax.kernels.lightning import lightning_attention_kernel

# The module (the package re-exports its function under the same name).
flash_module = importlib.import_module("momentum_jax.kernels.flash_attention")
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
  for implementation in (None, "xla", "cudnn", "pallas"):
    dispatch.check_implementation(implementation)
  with pytest.raises(ValueError, match="implementation='triton'"):
    dispatch.check_implementation("triton")


def test_cpu_defaults():
  assert jax.default_backend() == "cpu"
  for kernel in dispatch.DEFAULT_PLATFORMS:
    assert not dispatch.wants_kernel(None, kernel)
    assert not dispatch.wants_kernel("xla", kernel)
    assert dispatch.wants_kernel("pallas", kernel)
  with pytest.raises(ValueError, match="implementation='cudnn' has no lightning attention"):
    dispatch.wants_kernel("cudnn", "lightning")
  assert default_interpret()


OPTIONS = {
    "backend": ("cpu", "gpu", "tpu"),
    "dtype": (jnp.float32, jnp.bfloat16, jnp.float16),
    "head_dim": (64, 36, 128, 192, 320),
    "seq": ((256, 256), (256, 512), (255, 255)),
    "causal": (True, False),
    "window": (None, 64),
    "segment_ids": (False, True),
    "bias": (False, True),
    "sinks": (False, True),
    "static_scale": (True, False),
    "hopper": (False, True),
}


def _calls():
  for values in itertools.product(*OPTIONS.values()):
    options = dict(zip(OPTIONS, values))
    seq_q, seq_k = options.pop("seq")
    yield dispatch.SoftmaxCall(seq_q=seq_q, seq_k=seq_k, **options)


def _cudnn_can(call):
  """Footnote 1 of the dispatch table, restated."""
  head_dims = 256 if call.hopper else 128
  return (call.backend == "gpu" and call.dtype in (jnp.bfloat16, jnp.float16)
          and call.head_dim % 8 == 0 and call.head_dim <= head_dims and not call.segment_ids
          and not call.sinks and (call.window is None or call.causal)
          and (not call.causal or call.seq_q == call.seq_k)
          and (not call.bias or (call.seq_q % 2 == 0 and call.seq_k % 2 == 0))
          and call.static_scale)


def _splash_can(call):
  """Footnote 3 of the dispatch table, restated."""
  return (call.seq_q == call.seq_k and not call.bias and not call.sinks
          and (call.window is None or call.causal))


def _kernel_can(call):
  """Footnote 2 of the dispatch table, restated."""
  return (not call.bias and call.head_dim <= 256 and call.static_scale)


def test_the_route_table_for_every_option_combination():
  routes = {"xla": 0, "cudnn": 0, "pallas": 0, "splash": 0}
  for call in _calls():
    if call.backend == "tpu":
      expected = "splash" if _splash_can(call) else "xla"
    elif call.backend == "cpu":
      expected = "xla"
    elif _cudnn_can(call):
      expected = "cudnn"
    elif _kernel_can(call):
      expected = "pallas"
    else:
      expected = "xla"
    assert dispatch.softmax_route(None, call) == expected, call
    routes[expected] += 1
    assert dispatch.softmax_route("xla", call) == "xla"
    if _cudnn_can(call):
      assert dispatch.softmax_route("cudnn", call) == "cudnn"
    else:
      with pytest.raises(ValueError, match="implementation='cudnn': cuDNN"):
        dispatch.softmax_route("cudnn", call)
    if _kernel_can(call):
      assert dispatch.softmax_route("pallas", call) == "pallas"
    else:
      with pytest.raises(ValueError, match="implementation='pallas': .*flash kernel"):
        dispatch.softmax_route("pallas", call)
    if _splash_can(call):
      assert dispatch.softmax_route("splash", call) == "splash"
    else:
      with pytest.raises(ValueError, match="implementation='splash': "):
        dispatch.softmax_route("splash", call)
  assert all(routes.values()), routes  # every route is taken by some combination


def test_cudnn_is_refused_off_the_gpu_naming_the_backend():
  q, k, v, _ = inputs(3)
  for attend in (softmax_attention, functools.partial(momentum_attention, gamma=0.5)):
    with pytest.raises(ValueError, match="implementation='cudnn': cuDNN needs a GPU, the default "
                                         "backend is 'cpu'"):
      attend(q, k, v, implementation="cudnn")


@pytest.mark.kernels
@pytest.mark.parametrize("name, options, route", [
    ("softmax", {}, "cudnn"),
    ("momentum", {"gamma": 0.5}, "cudnn"),
    ("momentum", {"gamma": 0.5, "window": 5}, "cudnn"),
    ("softmax", {"sinks": jnp.asarray([0.5, -1.0, 0.0, 2.0])}, "pallas"),
    ("momentum", {"gamma": 0.5, "segment_ids": True}, "pallas"),
])
def test_the_gpu_default_takes_the_tabled_route(monkeypatch, name, options, route):
  """With the backend reported as a GPU, the default passes implementation="cudnn" to
  jax.nn.dot_product_attention (run here in its XLA form, since cuDNN needs a GPU) or runs the
  fused kernel (in interpret mode), and the output equals the CPU default's."""
  q, k, v, ids = inputs(5)
  q, k, v = (x[:, :36, :, :16].astype(jnp.bfloat16) for x in (q, k, v))
  options = dict(options)
  if options.pop("segment_ids", False):
    options["segment_ids"] = ids[:, :36]
  attend = functools.partial(FUNCTIONS[name], **options)
  expected = attend(q, k, v)
  passed = []
  xla_attention = jax.nn.dot_product_attention

  def recording(*args, implementation=None, **kwargs):
    passed.append(implementation)
    return xla_attention(*args, **kwargs)

  monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(dispatch, "is_hopper", lambda: True)
  monkeypatch.setattr(flash_module, "default_interpret", lambda: True)  # no Triton on this CPU
  got = attend(q, k, v)
  assert passed == (["cudnn"] if route == "cudnn" else [])
  assert ("pallas_call" in str(jax.make_jaxpr(attend)(q, k, v))) == (route == "pallas")
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32),
                             atol=2e-2)


@pytest.mark.kernels
def test_splash_in_tpu_interpret_mode_matches_the_pure_form():
  """Softmax (window 9, sinks absent) and momentum (per-kv-head γ) attention through the splash
  kernel: outputs and gradients w.r.t. q, k, v and γ equal the XLA form's, with GQA, segment ids
  and T = 37 (padded to one 128 tile inside)."""
  got, want = pallas_and_pure(functools.partial(softmax_attention, window=9), {}, 8,
                              implementation="splash")
  got_m, want_m = pallas_and_pure(momentum_attention, {"gamma": jnp.asarray([0.3, 0.7])}, 9,
                                  implementation="splash")
  assert len(got) == 4 and len(got_m) == 5
  for a, b in zip(got + got_m, want + want_m):
    assert rel_err(a, b) <= 1e-5


@pytest.mark.kernels
def test_the_tpu_default_runs_splash(monkeypatch):
  q, k, v, ids = inputs(10)
  expected = momentum_attention(q, k, v, gamma=0.5, segment_ids=ids)
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  monkeypatch.setattr(splash, "default_interpret", lambda: True)  # no TPU lowering on this CPU
  attend = functools.partial(momentum_attention, gamma=0.5, segment_ids=ids)
  assert "pallas_call" in str(jax.make_jaxpr(attend)(q, k, v))
  np.testing.assert_allclose(attend(q, k, v), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.kernels
@pytest.mark.parametrize("name", ["flex", "radial", "grat"])
def test_flex_masks_run_on_splash_on_a_tpu(monkeypatch, name):
  """The block-sparse variants built on flex attention take splash on a TPU (their mask_mod as a
  dense per-head mask) and give the XLA scan's output and gradients."""
  variant = get_attention(name)
  q, k, v, _ = inputs(11)
  loss = lambda q, k, v: jnp.sum(variant.fn(q, k, v, causal=True) * q)
  expected = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  monkeypatch.setattr(splash, "default_interpret", lambda: True)  # no TPU lowering on this CPU
  assert "pallas_call" in str(jax.make_jaxpr(loss)(q, k, v))
  got = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    assert rel_err(a, b) <= 1e-5


def test_flex_splash_refusals_are_named():
  q, k, v, _ = inputs(12)
  with pytest.raises(ValueError, match="implementation='splash': splash attention has no "
                                       "score_mod"):
    flex_attention(q, k, v, score_mod=lambda score, b, n, t, s: score, implementation="splash")
  with pytest.raises(ValueError, match="implementation must be None, 'xla' or 'splash'"):
    flex_attention(q, k, v, implementation="pallas")


@pytest.mark.kernels
def test_the_kernel_runs_in_interpret_mode_off_the_gpu(monkeypatch):
  """On a TPU (or any backend but the GPU) the kernel interprets instead of lowering to Triton."""
  q, k, v, _ = inputs(7)
  expected = flash_attention(q, k, v)
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert default_interpret()
  np.testing.assert_allclose(flash_attention(q, k, v), expected, rtol=1e-6, atol=1e-6)


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
  assert {case[0] for case in LOWERING_CASES} == {*dispatch.DEFAULT_PLATFORMS, *KERNELS}


@pytest.mark.kernels
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


def pallas_and_pure(attend, params, seed, implementation="pallas"):
  """Outputs and gradients w.r.t. q, k, v and ``params`` with ``implementation`` and with the
  default."""
  q, k, v, ids = inputs(seed)
  cotangent = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(q.shape), jnp.float32)

  def run(implementation):
    def loss(q, k, v, params):
      out = attend(q, k, v, segment_ids=ids, implementation=implementation, **params)
      return jnp.sum(out * cotangent), out
    return jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, params)

  (_, out), grads = run(implementation)
  (_, expected_out), expected_grads = run(None)
  return (out, *jax.tree.leaves(grads)), (expected_out, *jax.tree.leaves(expected_grads))


@pytest.mark.kernels
def test_lightning_pallas_on_cpu_matches_the_pure_form():
  attend = functools.partial(lightning_attention, scale=0.3, block_size=16)
  got, want = pallas_and_pure(attend, {"decay": jnp.asarray([0.05, 0.1, 0.2, 0.4])}, 1)
  assert len(got) == 5
  for a, b in zip(got, want):
    assert rel_err(a, b) <= 1e-5


@pytest.mark.kernels
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
