"""Every configs/*.py is valid, documents its command, and keeps the paper's defaults."""

import glob
import importlib
import os

import pytest

from simclr_jax import config_validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not p.endswith(('__init__.py', 'base.py')))


@pytest.mark.parametrize('name', CONFIGS)
def test_config_is_valid_and_documents_its_command(name):
  module = importlib.import_module(f'configs.{name}')
  config_validation.validate(module.get_config())
  assert f'--config=configs/{name}.py' in module.__doc__, 'docstring must hold the command'


def test_imagenet_is_the_papers_default():
  from configs import imagenet  # pylint: disable=g-import-not-at-top
  c = imagenet.get_config()
  assert (c.model.depth, c.model.width_multiplier, c.batch_size) == (50, 1.0, 4096)
  assert c.optimizer.learning_rate * c.batch_size / 256 == pytest.approx(4.8)
  assert (c.optimizer.weight_decay, c.loss.temperature, c.num_epochs) == (1e-6, 0.1, 100)
  assert (c.optimizer.warmup_epochs, c.model.head_out_dim, c.augment.color_strength) == (
      10, 128, 1.0)
  assert c.augment.blur


def test_unknown_field_in_a_config_file_is_named():
  from configs import fashion_mnist  # pylint: disable=g-import-not-at-top
  c = fashion_mnist.get_config()
  with c.unlocked():
    c.optimizer.lerning_rate = 0.1
  with pytest.raises(config_validation.ConfigError, match='optimizer.lerning_rate'):
    config_validation.validate(c)


def test_override_sets_python_literals_and_bare_strings():
  from simclr_jax import defaults  # pylint: disable=g-import-not-at-top
  config = defaults.get_config()
  for assignment in ('model.width_multiplier=0.25', 'model.stem_max_pool=False',
                     'optimizer.name=sgd', 'eval.label_fractions=(0.01,)'):
    defaults.override(config, assignment)
  assert config.model.width_multiplier == 0.25 and config.model.stem_max_pool is False
  assert config.optimizer.name == 'sgd' and tuple(config.eval.label_fractions) == (0.01,)
