"""Sample a continuation from a trained run: the newest readable checkpoint of a ``train`` workdir,
its model config from the checkpoint's signature and the tokeniser saved with the run.

    python -m momentum_jax.generate --workdir runs/text_lm/momentum_g0.25 --prompt "In the"
        [--max-new-tokens 200] [--temperature 0.8] [--top-k 40] [--top-p 1.0] [--seed 0]

The tokeniser is ``tokenizer.json`` in the workdir or the folder above it (where
``experiments/text_lm`` saves it); a byte-level run needs none. Decoding goes through the KV
cache (``momentum_jax.nn.generate``), so the model's attention must have a decoding form.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from momentum_jax.data import Tokenizer, load_tokenizer
from momentum_jax.data.text import TOKENIZER_FILE
from momentum_jax.nn import Transformer, TransformerConfig, generate
from momentum_jax.train import TrainConfig, batch_sharding, init_train_state, make_mesh
from momentum_jax.train import checkpoint


def _tokenizer(workdir: pathlib.Path, data: dict) -> Tokenizer:
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


def load_run(workdir: str | pathlib.Path) -> tuple[Transformer, Tokenizer]:
  """The trained model of ``workdir``'s newest readable checkpoint and the run's tokeniser.

  Raises:
    ValueError: ``workdir`` has no readable checkpoint, or the run has no tokeniser.
  """
  workdir = pathlib.Path(workdir)
  manager = checkpoint.checkpoint_manager(workdir)
  try:
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
      raise ValueError(f"workdir={str(workdir)!r} holds no checkpoint")
    signature = checkpoint.read_signature(manager, steps[0])
    model_config = TransformerConfig.from_dict(signature["model"])
    train_config = TrainConfig(**signature["train"])
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    graphdef, params, rest, opt_state, placement = init_train_state(
        model_config, train_config, mesh, batch_sharding(mesh, 1), jax.random.key(0))
    target = {"params": params, "opt_state": opt_state, "rest": checkpoint.saveable_rest(rest),
              "step": jax.device_put(0, placement.replicated)}
    restored = checkpoint.restore_latest(manager, target, signature)
  finally:
    manager.close()
  if restored is None:
    raise ValueError(f"workdir={str(workdir)!r} holds no readable checkpoint")
  model = nnx.merge(graphdef, restored.state["params"],
                    checkpoint.restored_rest(restored.state["rest"], rest))
  return model, _tokenizer(workdir, signature["task"])


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(prog="python -m momentum_jax.generate",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a train() workdir (a model's folder)")
  parser.add_argument("--prompt", required=True)
  parser.add_argument("--max-new-tokens", type=int, default=200)
  parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
  parser.add_argument("--top-k", type=int, default=None)
  parser.add_argument("--top-p", type=float, default=1.0)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  model, tokenizer = load_run(args.workdir)
  prompt_ids = tokenizer.encode(args.prompt)
  room = model.config.context_len - len(prompt_ids)
  if not prompt_ids.size or room < 0:
    raise ValueError(f"--prompt must encode to 1..{model.config.context_len} tokens (the model's "
                     f"context_len), got {len(prompt_ids)}")
  tokens = generate(model, jnp.asarray(prompt_ids)[None], min(args.max_new_tokens, room),
                    rng=jax.random.key(args.seed), temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p)
  text = tokenizer.decode(tokens[0])
  print(text)
  return text


if __name__ == "__main__":
  main()
