"""One process of the multi-host test (tests/test_multihost.py launches it; not a test itself).

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/multihost_worker.py \
    --coordinator=localhost:PORT --num_processes=2 --process_id=0 --out=DIR

Runs the project's real code path on real Fashion-MNIST with the tiny test config:
  1. 'step' phase: `train.setup` + `train.make_step` (Mapper over the global mesh of every
     process's devices), 3 steps on a fixed global batch of which this process feeds only its
     own rows through `Mapper.put_batch` (jax.make_array_from_process_local_data). Final params
     and the per-step losses go to DIR/step_<process_id>.npz.
  2. 'pretrain' phase (with --workdir): `run.train_and_evaluate(mode='pretrain')` (the real
     `train.pretrain`) for 3 steps into a workdir shared by all processes, then a fresh
     `checkpoint.Checkpointer` restores the newest step; its step and params go to
     DIR/pretrain_<process_id>.npz.
  3. 'standin' phase (with --standin_dir): the ImageNet config's default mode
     (`run.train_and_evaluate(mode='pretrain_then_eval')`: pretraining, the SGD linear protocol,
     kNN, 1 % and 10 % fine-tuning) shrunk to a tiny model and a few steps, on the streamed
     stand-in of real images written by `simclr_jax.data.standin` into that TFDS data_dir;
     results.json goes to DIR/standin_results.json (process 0).
  4. 'sigterm' phase (with --sigterm_workdir): `train.pretrain` for up to SIGTERM_STEPS steps,
     metrics every 4; process 1 (only) receives SIGTERM after step 6. The processes agree on the
     signal at the next log step, both save that step and return preempted; DIR/sigterm_<id>.json.
With --num_processes=1 (no coordinator) it is the single-process reference on all local devices.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from simclr_jax import checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import run  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import train_step as train_step_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_STEPS = 3
# Few training images: `setup` loads the source (and `pretrain` iterates it) but 3 steps of 16
# need no more, and loading less keeps each process's start short.
MAX_TRAIN_EXAMPLES = 256


def test_config():
  """The tiny test config (batch 16, 3 steps) shared by both phases."""
  return helpers.tiny_config(**{'dataset.max_train_examples': MAX_TRAIN_EXAMPLES,
                                'num_train_steps': NUM_STEPS})


def flat_params(params, prefix: str) -> dict:
  """{'<prefix><keystr>': np.ndarray} of a params pytree, for np.savez."""
  return {prefix + jax.tree_util.keystr(path): np.asarray(x)
          for path, x in jax.tree_util.tree_leaves_with_path(params)}


def step_phase(out_dir: str) -> None:
  """3 real mapped steps on a fixed global batch; this process feeds its own rows only."""
  config = test_config()
  s = train.setup(config)
  assert s.mapper.num_devices == jax.device_count(), 'the mesh must span every process'
  state = train_step_lib.create_train_state(s.model, s.method, s.tx, config,
                                            image_shape=s.image_shape)
  step_fn = train.make_step(s)
  device_state = s.mapper.put_state(state)
  rng = train_step_lib.run_key(config.seed)
  images, labels = helpers.fashion_mnist('train', 64)
  host_batch = config.batch_size // jax.process_count()
  # The mesh lists jax.devices() in order, so process p's devices hold global rows
  # [p * host_batch, (p + 1) * host_batch) of a batch sharded over 'batch'.
  first = jax.process_index() * host_batch
  losses = []
  for step in range(NUM_STEPS):
    rows = slice(step * config.batch_size + first, step * config.batch_size + first + host_batch)
    batch = {'views': helpers.simple_views(images[rows]), 'label': labels[rows]}
    device_state, metrics = step_fn(device_state, s.mapper.put_batch(batch), rng)
    losses.append(float(jax.device_get(metrics['loss'])))
  host_state = s.mapper.get_state(device_state)
  np.savez(os.path.join(out_dir, f'step_{jax.process_index()}.npz'), losses=np.asarray(losses),
           step=int(host_state.step), **flat_params(host_state.params, 'params'))


def pretrain_phase(out_dir: str, workdir: str) -> None:
  """`--mode=pretrain` (`run.train_and_evaluate`) into a shared workdir, then a restore."""
  config = test_config()
  results = run.train_and_evaluate(config, workdir, mode='pretrain')
  s = train.setup(config)
  template = train_step_lib.create_train_state(s.model, s.method, s.tx, config,
                                               image_shape=s.image_shape)
  ckpt = checkpoint.Checkpointer(workdir)
  restored_step, restored = ckpt.restore_latest(template)
  ckpt.close()
  np.savez(os.path.join(out_dir, f'pretrain_{jax.process_index()}.npz'),
           step=results['step'], restored_step=-1 if restored_step is None else restored_step,
           **flat_params(restored.params, 'params'))


def standin_config():
  """configs/imagenet.py on the stand-in, shrunk: ResNet-18 at width 1/8 on 16 px, batch 32."""
  from configs import imagenet  # pylint: disable=g-import-not-at-top
  c = imagenet.get_config()
  c.dataset.name = 'fashion_mnist_stream'
  c.dataset.download = False
  c.dataset.image_size = 16
  c.dataset.stream_shards = 8
  c.model.depth = 18
  c.model.width_multiplier = 0.125
  c.model.head_out_dim = 16
  c.batch_size = 32
  c.num_train_steps = 2
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.learning_rate = 0.05
  c.log_every_steps = 1
  c.checkpoint_every_steps = 100
  c.eval.batch_size = 32
  c.eval.knn_k = (5, 20)
  c.eval.linear_epochs = 0.125  # 2 steps of 32 of the 512 images
  c.eval.linear_batch_size = 32
  c.eval.finetune_epochs = (3, 1)  # 1 % = 10 labels, 10 % = 50: 1 and 2 steps
  c.eval.finetune_batch_size = 32
  c.eval.finetune_learning_rate = 0.05
  return c


def standin_phase(out_dir: str, workdir: str, data_dir: str) -> None:
  config = standin_config()
  config.dataset.data_dir = data_dir
  results = run.train_and_evaluate(config, workdir, mode='pretrain_then_eval')
  if jax.process_index() == 0:
    with open(os.path.join(out_dir, 'standin_results.json'), 'w') as f:
      json.dump(results, f)


SIGTERM_STEPS = 40
SIGTERM_AFTER_STEP = 6


def sigterm_phase(out_dir: str, workdir: str) -> None:
  import signal  # pylint: disable=g-import-not-at-top
  config = helpers.tiny_config(**{'dataset.max_train_examples': MAX_TRAIN_EXAMPLES,
                                  'num_train_steps': SIGTERM_STEPS, 'log_every_steps': 4,
                                  'checkpoint_every_steps': 100})

  def on_step(step):
    if jax.process_index() == 1 and step == SIGTERM_AFTER_STEP:
      os.kill(os.getpid(), signal.SIGTERM)

  out = train.pretrain(config, workdir, on_step=on_step)
  with open(os.path.join(out_dir, f'sigterm_{jax.process_index()}.json'), 'w') as f:
    json.dump({'step': out['step'], 'preempted': out['preempted']}, f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--coordinator', default=None, help='host:port of process 0')
  parser.add_argument('--num_processes', type=int, default=1)
  parser.add_argument('--process_id', type=int, default=0)
  parser.add_argument('--out', required=True, help='folder for the .npz results')
  parser.add_argument('--workdir', default=None, help='shared workdir: also run train.pretrain')
  parser.add_argument('--standin_dir', default=None,
                      help='TFDS data_dir holding the streamed stand-in: also run the ImageNet '
                      'config on it')
  parser.add_argument('--standin_workdir', default=None, help='workdir of the stand-in run')
  parser.add_argument('--sigterm_workdir', default=None,
                      help='also run the SIGTERM phase into this workdir')
  parser.add_argument('--compilation_cache', default=None,
                      help='persistent XLA cache folder: the pretrain phase compiles the same '
                      'step as the step phase, so it reuses that compilation')
  args = parser.parse_args()
  if args.compilation_cache:
    jax.config.update('jax_compilation_cache_dir', args.compilation_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  t0 = time.time()
  if args.num_processes > 1:
    parallel.maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    assert jax.process_count() == args.num_processes
  t1 = time.time()
  step_phase(args.out)
  t2 = time.time()
  if args.workdir:
    pretrain_phase(args.out, args.workdir)
  t3 = time.time()
  if args.standin_dir:
    standin_phase(args.out, args.standin_workdir, args.standin_dir)
  if args.sigterm_workdir:
    sigterm_phase(args.out, args.sigterm_workdir)
  print(f'process {jax.process_index()}: done (init {t1 - t0:.1f} s, step phase {t2 - t1:.1f} s, '
        f'pretrain phase {t3 - t2:.1f} s, stand-in phase {time.time() - t3:.1f} s)', flush=True)


if __name__ == '__main__':
  main()
