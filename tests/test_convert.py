"""simclr_jax.convert against the official SimCLR code's own outputs.

The fixtures (tests/official/*.tar.xz) were written by tests/official/make_fixtures.py, which
runs the official TF2 model code (google-research/simclr) on real Fashion-MNIST images and keeps
its checkpoint, its SavedModel export and its eval-mode outputs. Each is converted from both
formats and run here; h, every projection layer and the supervised logits must equal the
official ones within 1e-4 of their scale.
"""

import glob
import json
import os
import tarfile

import jax
import numpy as np
import pytest

from simclr_jax import convert
from simclr_jax import defaults
from simclr_jax import run
from simclr_jax.models import build_model
from tests import helpers

FIXTURES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), 'official', '*.tar.xz')))
# format -> its path in a fixture; tf1_* fixtures hold the TF1 code's checkpoint, the others the
# TF2 code's checkpoint and SavedModel.
FORMATS = {'checkpoint': 'ckpt', 'saved_model': 'saved_model', 'tf1': 'tf1'}


def _name(path: str) -> str:
  return os.path.basename(path)[:-len('.tar.xz')]


@pytest.fixture(scope='module')
def extracted(tmp_path_factory):
  root = tmp_path_factory.mktemp('official')
  out = {}
  for path in FIXTURES:
    with tarfile.open(path) as tar:
      tar.extractall(root, filter='data')
    out[_name(path)] = str(root / _name(path))
  return out


def _cases():
  for path in FIXTURES:
    name = _name(path)
    for fmt in (('tf1',) if name.startswith('tf1_') else ('checkpoint', 'saved_model')):
      yield name, fmt


def test_fixtures_cover_both_depth_kinds_sk_width_and_both_codes():
  specs = [n.removeprefix('tf1_').split('_') for n in map(_name, FIXTURES)]
  assert {s[0] for s in specs} == {'r18', 'r50'}
  assert {s[1] for s in specs} >= {'1x', '2x'} and {s[2] for s in specs} == {'sk0', 'sk1'}
  assert {fmt for _, fmt in _cases()} == set(FORMATS)


def _model_config(fields: dict):
  config = defaults.get_config()
  for k, v in fields.items():
    config.model[k] = v
  return config.model


@pytest.mark.parametrize('name, fmt', list(_cases()))
def test_converted_outputs_equal_the_official_outputs(extracted, name, fmt):
  root = extracted[name]
  with open(os.path.join(root, 'spec.json')) as f:
    spec = json.load(f)
  official = dict(np.load(os.path.join(root, 'outputs.npz')))
  variables, fields = convert.convert_variables(
      convert.read_variables(os.path.join(root, FORMATS[fmt])),
      supervised_head_input=spec['ft_proj_selector'])
  # The architecture is read off the variables.
  assert fields['depth'] == spec['depth']
  assert fields['width_multiplier'] == spec['width_multiplier']
  assert fields['sk_ratio'] == spec['sk_ratio']
  assert fields['head_num_layers'] == spec['num_proj_layers']
  assert fields['num_classes'] == spec['num_classes']
  num_classes = fields.pop('num_classes')
  model = build_model(_model_config(fields), num_classes=num_classes, image_size=56)
  images = official['images']
  variables = convert.model_variables(model, variables, image_shape=images.shape[1:])
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  ours = {'h': out['h'], 'logits_sup': out['probe_logits'],
          **{f'head_{i}': out['head_outputs'][i] for i in range(1, len(out['head_outputs']))}}
  assert sorted(ours) == sorted(k for k in official if k != 'images')
  for key, expected in official.items():
    if key == 'images':
      continue
    scale = float(np.abs(expected).max())
    assert scale > 1e-3, f'{key}: the fixture carries no signal'
    np.testing.assert_allclose(np.asarray(ours[key]), expected, rtol=1e-4, atol=1e-4 * scale,
                               err_msg=f'{name} {fmt} {key}')


def test_a_checkpoint_directory_reads_its_newest_prefix(extracted):
  root = os.path.join(extracted['r18_1x_sk0'], 'ckpt')
  assert convert.checkpoint_prefix(root) == os.path.join(root, 'ckpt')
  # The TF1 directory's `checkpoint` file names the prefix by the absolute path of the machine
  # that wrote it; the prefix is found here by its name.
  root = os.path.join(extracted['tf1_r18_1x_sk0'], 'tf1')
  with open(os.path.join(root, 'checkpoint')) as f:
    assert root not in f.read()
  assert convert.checkpoint_prefix(root) == os.path.join(root, 'model.ckpt-0')


def test_not_an_official_checkpoint_names_the_fix(tmp_path):
  with pytest.raises(convert.ConversionError, match='SavedModel'):
    convert.checkpoint_prefix(str(tmp_path))
  with pytest.raises(convert.ConversionError, match='looked for .*ckpt-100.index'):
    convert.checkpoint_prefix(str(tmp_path / 'ckpt-100'))


def test_supervised_head_input_beyond_the_head_is_an_error(extracted):
  name = _name(FIXTURES[0])
  variables = convert.read_variables(os.path.join(extracted[name], 'ckpt'))
  with pytest.raises(convert.ConversionError, match='projection layers'):
    convert.convert_variables(variables, supervised_head_input=9)


BASE_CONFIG = '''
from tests import helpers


def get_config():
  c = helpers.tiny_eval_config()
  c.dataset.rgb = True
  c.eval.label_fractions = (0.1,)
  c.eval.label_subsets = 1
  c.eval.knn_k = (5,)
  c.eval.transfer_dataset = 'sklearn_digits'
  return c
'''


def test_every_mode_runs_on_a_converted_checkpoint(extracted, tmp_path):
  """convert() writes a workdir that the evaluation modes read as they read our own."""
  name = 'r18_1x_sk0'
  base = tmp_path / 'base.py'
  base.write_text(BASE_CONFIG)
  workdir = str(tmp_path / 'converted')
  fields = convert.convert(os.path.join(extracted[name], 'saved_model'), workdir,
                           base_config=str(base))
  assert fields['depth'] == 18 and fields['num_classes'] == 10
  with pytest.raises(convert.ConversionError, match='empty workdir'):
    convert.convert(os.path.join(extracted[name], 'ckpt'), workdir, base_config=str(base))
  config = defaults.config_file(os.path.join(workdir, 'config.py'), 'config').get_config()
  assert config.model.depth == 18 and config.model.max_pool_padding == 'same'
  results = {}
  for mode in ('probe', 'eval_all', 'transfer'):
    results.update(run.train_and_evaluate(config, workdir, mode=mode))
  for key in ('probe_top1', 'linear_eval_top1', 'knn5_top1', 'finetune_10pct_top1',
              'linear_10pct_top1', 'embed_plot', 'transfer_sklearn_digits_top1'):
    assert key in results, key
  assert results['encoder_step'] == 0
  # The official head read on the test images: the fixture's weights are arbitrary, so only
  # that it ran over the split: 300 images, a multiple of 1/300.
  assert abs(results['probe_top1'] * 300 - round(results['probe_top1'] * 300)) < 1e-6
