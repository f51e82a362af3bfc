"""Command-line entry: `python -m simclr_jax.main --config=configs/fashion_mnist.py --workdir=DIR`.

Thin on purpose: flags in, one call to `simclr_jax.run.train_and_evaluate`, nothing else.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from simclr_jax import parallel
from simclr_jax import run
from simclr_jax import xla_setup

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a configs/*.py file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.json '
                    '(local path or gs://).')
flags.DEFINE_enum('mode', 'pretrain_then_eval', run.MODES, 'What to run.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0 '
                    '(not needed on Cloud TPU, where JAX finds it).')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(logging.logging.Filter):
  """Drops INFO records of Orbax (a dozen lines per checkpoint); keeps its warnings."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or 'orbax' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # Before anything starts a JAX backend: XLA reads its flags once.
  xla_setup.apply_xla_flags(FLAGS.config.xla_flags)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # TF only feeds data: keep it off the accelerators JAX uses.
  tf.config.set_visible_devices([], 'GPU')
  parallel.maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                        FLAGS.process_id)
  logging.info('process %d of %d; devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  advice = xla_setup.allocator_advice(jax.default_backend())
  if advice:
    logging.warning(advice)
  results = run.train_and_evaluate(FLAGS.config, FLAGS.workdir, mode=FLAGS.mode)
  if results.get('preempted'):
    # Non-zero, so `main && next_step` does not go on with an unfinished run.
    raise SystemExit(f'stopped by a signal at step {results.get("step")}; the checkpoint is in '
                     f'{FLAGS.workdir}. Rerun the same command to resume.')
  if jax.process_index() == 0:
    print(run.summary(results))


if __name__ == '__main__':
  app.run(main)
