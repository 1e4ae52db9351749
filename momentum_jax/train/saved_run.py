"""A trained run read back from its workdir: the model of its newest readable checkpoint, built
from the model config in the checkpoint's signature, and the tokeniser saved with the run.

The tokeniser is ``tokenizer.json`` in the workdir or the folder above it (where
``experiments/text_lm`` saves it); a byte-level run needs none. Reading a run creates no folder.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from momentum_jax.data import Tokenizer, load_tokenizer
from momentum_jax.data.text import TOKENIZER_FILE
from momentum_jax.nn import Transformer, TransformerConfig
from momentum_jax.train import checkpoint
from momentum_jax.train.config import TrainConfig
from momentum_jax.train.sharding import batch_sharding, make_mesh
from momentum_jax.train.state import TrainState
from momentum_jax.train.step import init_train_state


def load_run(workdir: str | os.PathLike[str]) -> tuple[Transformer, Tokenizer]:
  """The trained model of ``workdir``'s newest readable checkpoint and the run's tokeniser.

  The model is restored on one device. Example::

    model, tokenizer = load_run("runs/text_lm/momentum_g0.25")
    prompt_1xP = jnp.asarray(tokenizer.encode("In the"))[None]
    text = tokenizer.decode(momentum_jax.nn.generate(model, prompt_1xP, 50)[0])

  Raises:
    FileNotFoundError: ``workdir`` does not exist.
    NotADirectoryError: ``workdir`` is a file.
    ValueError: ``workdir`` has no readable checkpoint (when it is an experiment's run folder, the
      message lists its model folders, the workdirs to choose from), or the run has no tokeniser.
  """
  workdir = pathlib.Path(workdir)
  if not workdir.exists():
    raise FileNotFoundError(f"workdir={str(workdir)!r} does not exist")
  if not workdir.is_dir():
    raise NotADirectoryError(f"workdir={str(workdir)!r} is a file, not a run's folder")
  if not _has_steps(workdir):
    models = sorted(folder.name for folder in workdir.iterdir() if _has_steps(folder))
    if models:
      raise ValueError(
          f"workdir={str(workdir)!r} holds no checkpoint, but these model folders in it do: "
          f"{', '.join(models)}; choose one as the workdir: {workdir / '<model>'}")
    raise ValueError(f"workdir={str(workdir)!r} holds no checkpoint, nor does any folder in it")
  manager = checkpoint.checkpoint_manager(workdir, create=False)
  try:
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
      raise ValueError(f"workdir={str(workdir)!r} holds no checkpoint")
    signature = _newest_signature(manager, steps, workdir)
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    graphdef, fresh, placement = init_train_state(
        TransformerConfig.from_dict(signature["model"]), TrainConfig(**signature["train"]), mesh,
        batch_sharding(mesh, 1), jax.random.key(0))
    restored = checkpoint.restore_latest(
        manager, fresh.checkpoint_tree(placement.replicated), signature, read_only=True)
  finally:
    manager.close()
  if restored is None:
    raise ValueError(f"workdir={str(workdir)!r} holds no readable checkpoint")
  state = TrainState.from_checkpoint_tree(restored.state, like=fresh)
  return nnx.merge(graphdef, state.params, state.rest), _tokenizer(workdir, signature["task"])


def _has_steps(folder: pathlib.Path) -> bool:
  """Whether ``folder`` is a train() workdir: its ``checkpoints`` holds a step's folder."""
  steps = folder / "checkpoints"
  return steps.is_dir() and any(step.name.isdigit() and step.is_dir() for step in steps.iterdir())


def _tokenizer(workdir: pathlib.Path, data: dict[str, Any]) -> Tokenizer:
  """The run's tokeniser: its saved file, or bytes for a byte-level run without one."""
  name = data.get("tokenizer")
  if name is None:
    raise ValueError(f"the run in {workdir} trained on a synthetic task ({data.get('name')}), "
                     "not on text: it has no tokeniser to turn a prompt into tokens")
  for folder in (workdir, workdir.parent):
    if (folder / TOKENIZER_FILE).is_file():
      return load_tokenizer(name, path=folder / TOKENIZER_FILE, vocab_size=data["vocab_size"])
  if name == "byte":
    return load_tokenizer("byte")
  raise ValueError(f"no {TOKENIZER_FILE} in {workdir} or {workdir.parent}: a {name!r} run "
                   "keeps its tokeniser there")


def _newest_signature(manager: ocp.CheckpointManager, steps: list[int],
                      workdir: pathlib.Path) -> dict:
  """The run signature of the newest of ``steps`` whose config reads (``restore_latest`` checks
  it against the rest of its step)."""
  for step in steps:
    try:
      return checkpoint.read_signature(manager, step)
    except Exception:  # a damaged step: restore_latest reports it when it skips it
      continue
  raise ValueError(f"workdir={str(workdir)!r} holds no readable checkpoint: the config of every "
                   f"step ({', '.join(map(str, steps))}) is unreadable")
