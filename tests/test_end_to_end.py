"""End to end on real Fashion-MNIST: learning happens; the main job writes sane results."""

import json
import os

import numpy as np

from simclr_jax import checkpoint
from simclr_jax import run
from simclr_jax import train
from tests import helpers


def test_fifty_steps_lower_the_loss_and_rank_positives_first(tmp_path):
  """A tiny ResNet learns on a small real subset."""
  config = helpers.tiny_config(num_train_steps=50, batch_size=32, num_devices=1,
                               log_every_steps=5, checkpoint_every_steps=50)
  config.dataset.max_train_examples = 2048
  config.optimizer.learning_rate = 1.0
  config.optimizer.warmup_epochs = 0.1
  config.loss.temperature = 0.2
  config.augment.crop_area_min = 0.2
  history = train.pretrain(config, str(tmp_path))['history']
  # Logged values are single-batch figures: compare means of the first and last few.
  early_loss = np.mean([h['train/loss'] for h in history[:2]])
  late_loss = np.mean([h['train/loss'] for h in history[-3:]])
  late_accuracy = np.mean([h['train/contrast_accuracy'] for h in history[-3:]])
  chance = 1 / (2 * config.batch_size - 1)  # one positive among 2N - 1 candidates
  assert late_loss < early_loss - 0.5, (early_loss, late_loss)
  assert late_accuracy > 5 * chance, late_accuracy


def test_main_job_pretrains_checkpoints_resumes_and_writes_results(tmp_path):
  """Tiny config, 8 simulated devices, checkpoint, resume, results.json."""
  workdir = str(tmp_path)
  config = helpers.tiny_config(num_train_steps=4, batch_size=16, num_devices=8,
                               checkpoint_every_steps=2, log_every_steps=2)
  config.dataset.train_split = 'train[:1024]'
  config.dataset.eval_split = 'test[:500]'
  config.eval.max_iters = 100
  run.train_and_evaluate(config, workdir, mode='pretrain')
  assert checkpoint.Checkpointer(workdir).all_steps() == [2, 4]
  with config.unlocked():
    config.num_train_steps = 6
  results = run.train_and_evaluate(config, workdir, mode='pretrain_then_eval')
  assert checkpoint.Checkpointer(workdir).all_steps() == [2, 4, 6]
  with open(os.path.join(workdir, 'results.json')) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(results))
  assert saved['step'] == 6 and saved['encoder_step'] == 6
  assert np.isfinite(saved['train_loss']) and saved['train_loss'] > 0
  for key in ('linear_eval_top1', 'pixel_baseline_top1'):
    assert 0.3 < saved[key] <= 1.0, (key, saved[key])  # well above 10-class chance
  assert 0.0 <= saved['online_probe_top1'] <= 1.0  # 6 steps of probe training: near chance
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['num_train_steps'] == 6
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(workdir))
  # Each further protocol adds its key.
  results = run.train_and_evaluate(config, workdir, mode='knn')
  assert {'knn20_top1', 'knn200_top1'} <= set(results)
