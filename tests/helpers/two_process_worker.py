"""Trains a tiny model on a synthetic task and on packed text, in this process: one process of a
run of several under ``python -m momentum_jax.train.launch``, or a plain one. For
``tests/train/test_two_processes.py``.

    python two_process_worker.py ROOT STEPS CORPUS

Each run trains into ``ROOT/<kind>`` for STEPS steps on a mesh of 8 devices (resuming from a
checkpoint there), the text run on the folder of ``.txt`` documents CORPUS; process 0 then writes
``ROOT/<kind>.json`` (the metrics history, the final evaluation, what the process saw of the
run) and ``ROOT/<kind>.npz`` (the final parameters, gathered from every process). Last, every
process calls the experiment recipe's ``finish`` into ``ROOT/results`` with its own process index
in the summary, process 1 after a pause, so that a results file written by any process but 0
would be the one left.
"""

import dataclasses
import json
import pathlib
import sys
import time

import jax
import numpy as np

from momentum_jax.data import InductionTask, TextDataConfig, load_text_dataset
from momentum_jax.experiments.cli import ExperimentRun
from momentum_jax.experiments.recipe import finish, new_figure
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig, distributed, train
from momentum_jax.train.distributed import host_arrays, is_main_process

# Under the launcher, which joined this process to the run: joining again with the same settings
# does nothing, with others is refused.
rejoin = {}
if jax.process_count() > 1:
  distributed.initialize()
  try:
    distributed.initialize(num_processes=3)
  except ValueError as error:
    rejoin["other_settings"] = str(error)

root, steps, corpus = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
base = TrainConfig(steps=steps, batch_size=8, learning_rate=3e-3, optimizer="adamw",
                   weight_decay=0.01, eval_every=5, eval_batches=2, log_every=1,
                   checkpoint_every=5, tensorboard=True)
task = InductionTask(vocab_size=32, segment_len=4, max_gap=4)
runs = {
    # FSDP over the 8 devices of both processes: each process holds half of every kernel.
    "synthetic": (TransformerConfig(vocab_size=32, context_len=task.seq_len, num_layers=2,
                                    d_model=32, num_heads=4, mlp_dim=64, attention="momentum",
                                    attention_params={"gamma": 0.5}),
                  dataclasses.replace(base, mesh_shape=(1, 8, 1)), task),
    # Data × FSDP; process p reads the p-th half of every batch of packed text.
    "text": (TransformerConfig(vocab_size=256, context_len=32, num_layers=1, d_model=32,
                               num_heads=2, mlp_dim=64, attention="momentum",
                               attention_params={"gamma": 0.5}),
             dataclasses.replace(base, mesh_shape=(2, 4, 1)),
             load_text_dataset(TextDataConfig(source=corpus, seq_len=32,
                                              validation_fraction=0.25))),
}
for kind, (model, cfg, data) in runs.items():
  result = train(model, cfg, data, root / kind, progress=False)
  params = [np.asarray(x) for x in jax.tree.leaves(host_arrays(result.params))]
  if is_main_process():
    np.savez(root / f"{kind}.npz", *params)
    (root / f"{kind}.json").write_text(json.dumps({
        "history": result.history, "final_eval": result.final_eval,
        "process_count": jax.process_count(), "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "cpu_collectives": jax.config.values["jax_cpu_collectives_implementation"],
        "rejoin": rejoin}))

if jax.process_index() == 1:
  time.sleep(2.0)
run = ExperimentRun(name="two_processes", quick=False, progress=False, out_dir=root / "results",
                    config=base, overrides={})
run.out_dir.mkdir(parents=True, exist_ok=True)
figure, axes = new_figure(figsize=(3, 2))
axes.plot([r["train_loss"] for r in result.history if "train_loss" in r])
finish(run, {"written_by": jax.process_index()}, {"curve.png": figure})
