"""Trains (or loads) the 2-layer softmax and 1-layer momentum induction models and scores every
head as previous-token, duplicate-token, induction and prefix-matching head.

    python -m momentum_jax.experiments.head_detection [--quick] [--fresh] [...]
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.analysis import chance_scores, detect_heads, plot_head_scores, score_heads
from momentum_jax.data import repeated_random_tokens
from momentum_jax.experiments.cli import start_experiment
from momentum_jax.experiments.head_detection.config import ExperimentConfig, get_config
from momentum_jax.experiments.recipe import Trained, each_model, finish, train_models


def head_score_tables(patterns: dict[str, jax.Array], tokens_BxT: jax.Array,
                      repeat_len: int) -> dict[str, np.ndarray]:
  """Batch-mean score per (layer, head) for each kind: ``{kind: scores_LxN}``."""
  per_layer = [score_heads(patterns[name], tokens_BxT, repeat_len=repeat_len)
               for name in sorted(patterns)]
  return {kind: np.stack([np.asarray(jnp.mean(scores[kind], axis=0)) for scores in per_layer])
          for kind in per_layer[0]}


def _row(trained: Trained, config: ExperimentConfig, tokens_BxT: jax.Array,
         out_dir: pathlib.Path) -> dict:
  """The head scores of a trained model (and their plots), the heads detected."""
  _, cache = trained.result.model.run_with_cache(
      tokens_BxT, names_filter=lambda hook: hook.endswith("attn.hook_pattern"))
  tables = head_score_tables(cache, tokens_BxT, config.repeat_len)
  found = detect_heads(cache, tokens_BxT, config.threshold, min_lift=config.min_lift,
                       repeat_len=config.repeat_len)
  for kind in ("previous_token", "induction"):
    plot_head_scores(tables[kind], out_dir / f"{trained.name}_{kind}.png",
                     title=f"{trained.name}: {kind.replace('_', '-')} score")
  return {"eval_accuracy": float(trained.result.final_eval["accuracy"]),
          "scores": {kind: table.tolist() for kind, table in tables.items()},
          "detected": [hit._asdict() for hit in found]}


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "head_detection", get_config)
  config = run.config
  tokens_BxT = repeated_random_tokens(jax.random.key(config.seed), config.probe_batch,
                                      config.repeat_len, config.task.vocab_size)
  chance = {kind: float(jnp.mean(score_B)) for kind, score_B in
            chance_scores(tokens_BxT, repeat_len=config.repeat_len).items()}
  results = train_models(run, each_model(config.models, config.train), config.task,
                         lambda trained: _row(trained, config, tokens_BxT, run.out_dir))
  print("uniform head (chance): " + ", ".join(f"{kind} {value:.3f}"
                                              for kind, value in chance.items()))
  print(f"detected: score >= {config.threshold} and lift (score / chance) >= {config.min_lift}")
  for name, r in results.items():
    print(f"\n{name} (held-out accuracy {r['eval_accuracy']:.1%}); score (lift)")
    print(f"{'layer.head':<12}" + "".join(f"{kind:>19}" for kind in r["scores"]))
    num_layers, num_heads = np.shape(r["scores"]["induction"])
    for layer in range(num_layers):
      for head in range(num_heads):
        scores = [(r["scores"][kind][layer][head], chance[kind]) for kind in r["scores"]]
        cells = [f"{score:.3f} ({score / null:5.1f})" for score, null in scores]
        print(f"{f'{layer}.{head}':<12}" + "".join(f"{cell:>19}" for cell in cells))
    print("detected: " + (", ".join(
        f"L{h['layer']}H{h['head']} {h['kind']} {h['score']:.2f} ({h['lift']:.1f}x)"
        for h in r["detected"]) or "none"))
  return finish(run, {"repeat_len": config.repeat_len, "threshold": config.threshold,
                      "min_lift": config.min_lift, "chance": chance, "results": results},
                {}, results_file="head_detection.json")


if __name__ == "__main__":
  main()
