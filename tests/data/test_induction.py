"""InductionTask: shapes, determinism, the mask against a NumPy re-derivation, config errors."""

import jax
import numpy as np
import pytest

from momentum_jax.data import Batch, InductionTask

TASK = InductionTask(vocab_size=16, segment_len=4, max_gap=4)


def _sample(task: InductionTask, seed: int, batch_size: int) -> Batch:
  return jax.device_get(task.sample(jax.random.key(seed), batch_size))


def _second_copy_start(tokens_T: np.ndarray) -> int:
  """S[0] occurs exactly twice (gap tokens avoid S): the second occurrence starts the copy."""
  (starts,) = np.nonzero(tokens_T == tokens_T[0])
  assert len(starts) == 2, starts
  return int(starts[1])


def test_shapes_and_dtypes():
  batch = _sample(TASK, 0, 8)
  assert TASK.seq_len == 2 * 4 + 4 + 1
  for name, dtype in [("tokens", np.int32), ("targets", np.int32), ("loss_mask", np.float32)]:
    array = getattr(batch, name)
    assert array.shape == (8, TASK.seq_len), name
    assert array.dtype == dtype, name
  assert batch.tokens.min() >= 0 and batch.tokens.max() < TASK.vocab_size
  np.testing.assert_array_equal(batch.tokens[:, 1:], batch.targets[:, :-1])


def test_deterministic_from_key_and_jittable():
  a = _sample(TASK, 3, 16)
  b = _sample(TASK, 3, 16)
  c = _sample(TASK, 4, 16)
  jitted = jax.device_get(jax.jit(TASK.sample, static_argnums=1)(jax.random.key(3), 16))
  for x, y, z in zip(a, b, jitted):
    np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(x, z)
  assert not np.array_equal(a.tokens, c.tokens)


@pytest.mark.parametrize("task", [TASK, InductionTask(), InductionTask(8, 2, 0)])
def test_mask_marks_exactly_the_induction_positions(task):
  batch = _sample(task, 1, 64)
  m = task.segment_len
  for tokens_T, targets_T, mask_T in zip(batch.tokens, batch.targets, batch.loss_mask):
    second = _second_copy_start(tokens_T)
    expected_T = np.zeros(task.seq_len, np.float32)
    expected_T[second : second + m - 1] = 1.0
    np.testing.assert_array_equal(mask_T, expected_T)
    for t in np.nonzero(mask_T)[0]:
      (earlier,) = np.nonzero(tokens_T[:t] == tokens_T[t])
      assert len(earlier) == 1, (t, earlier)
      assert targets_T[earlier[0]] == targets_T[t]


def test_segment_distinct_and_gap_disjoint():
  batch = _sample(TASK, 2, 64)
  m = TASK.segment_len
  for tokens_T, targets_T in zip(batch.tokens, batch.targets):
    raw = np.concatenate([tokens_T, targets_T[-1:]])
    segment = raw[:m]
    assert len(set(segment.tolist())) == m
    second = _second_copy_start(tokens_T)
    np.testing.assert_array_equal(raw[second : second + m], segment)
    gap_and_padding = np.concatenate([raw[m:second], raw[second + m :]])
    assert not set(gap_and_padding.tolist()) & set(segment.tolist())


def test_offsets_vary_over_the_whole_gap_range():
  batch = _sample(TASK, 5, 256)
  gaps = {_second_copy_start(t) - TASK.segment_len for t in batch.tokens}
  assert gaps == set(range(TASK.max_gap + 1))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(vocab_size=16, segment_len=1, max_gap=4), "segment_len=1"),
        (dict(vocab_size=16, segment_len=4, max_gap=-1), "max_gap=-1"),
        (dict(vocab_size=5, segment_len=4, max_gap=4), "vocab_size=5"),
    ],
)
def test_bad_config_raises(kwargs, field):
  with pytest.raises(ValueError, match=field):
    InductionTask(**kwargs)


def test_hashable_and_frozen():
  assert hash(TASK) == hash(InductionTask(16, 4, 4))
  with pytest.raises(AttributeError):
    TASK.vocab_size = 3
