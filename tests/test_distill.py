"""SimCLRv2's distillation: the loss against float64 NumPy, the step on 8 devices == 1, the mode.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax import defaults
from simclr_jax import parallel
from simclr_jax import run
from simclr_jax.evaluation import classifier
from simclr_jax.evaluation import data as data_lib
from simclr_jax.methods import losses
from simclr_jax.models import build_model
from tests import helpers

IMAGE_SIZE = 16


def _softmax64(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _reference(student, teacher, t):
  """float64: -T^2 sum_y softmax(teacher / T) log softmax(student / T), per row."""
  s = np.asarray(student, np.float64) / t
  log_p = s - s.max(-1, keepdims=True)
  log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
  return -t ** 2 * np.sum(_softmax64(np.asarray(teacher, np.float64) / t) * log_p, -1)


@pytest.mark.parametrize('temperature', [1.0, 0.5, 2.0])
def test_distillation_loss_and_gradient_equal_float64_numpy(temperature):
  rng = np.random.default_rng(0)
  student = rng.normal(0, 3, (16, 10)).astype(np.float32)
  teacher = rng.normal(0, 3, (16, 10)).astype(np.float32)
  got = losses.distillation_loss(student, teacher, temperature=temperature)
  np.testing.assert_allclose(got, _reference(student, teacher, temperature), rtol=1e-5)
  # d/ds = T (softmax(s / T) - softmax(t / T)); the teacher gets no gradient.
  g_s, g_t = jax.grad(lambda s, t: losses.distillation_loss(s, t, temperature=temperature).sum(),
                      argnums=(0, 1))(student, teacher)
  expected = temperature * (_softmax64(student.astype(np.float64) / temperature)
                            - _softmax64(teacher.astype(np.float64) / temperature))
  np.testing.assert_allclose(g_s, expected, rtol=1e-4, atol=1e-6)
  assert not np.any(np.asarray(g_t))


def test_matching_the_teacher_is_the_minimum():
  teacher = np.random.default_rng(1).normal(0, 2, (4, 10)).astype(np.float32)
  at_teacher = losses.distillation_loss(teacher, teacher, temperature=1.0)
  other = losses.distillation_loss(teacher + np.eye(4, 10, dtype=np.float32), teacher,
                                   temperature=1.0)
  assert np.all(np.asarray(other) > np.asarray(at_teacher))


def test_bad_temperature_raises():
  with pytest.raises(ValueError, match='temperature'):
    losses.distillation_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), temperature=0.0)


@pytest.fixture(scope='module')
def tiny():
  model = build_model(helpers.tiny_config().model, num_classes=10, image_size=IMAGE_SIZE)
  init = jax.jit(lambda key: model.init(key, jnp.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 1)),
                                        train=False))
  student = jax.device_get(init(jax.random.key(0, impl='rbg')))
  teacher = jax.device_get(init(jax.random.key(1, impl='rbg')))
  images, labels = helpers.fashion_mnist('train', 128)
  images = np.asarray(jax.image.resize(images, (128, IMAGE_SIZE, IMAGE_SIZE, 1), 'linear'))
  return model, student, teacher, images, labels


def _distill(tiny, num_devices, label_weight):
  model, student, teacher, images, labels = tiny
  # A third of the images labelled, unevenly over the cores' rows.
  labels = np.where(np.arange(len(labels)) % 3 == 0, labels, -1).astype(np.int32)
  train = data_lib.EvalSplit.from_arrays(images, labels, num_classes=10)
  head = np.random.default_rng(2).normal(0, 0.5, (64, 10)).astype(np.float32)
  return classifier.train_classifier(
      model, student, train, train, num_classes=10, fine_tune_after_block=-1, head_layer=0,
      train_head=False, steps=3, batch_size=32, learning_rate=0.1, seed=0,
      mapper=parallel.Mapper(num_devices), eval_batch_size=64,
      distillation=classifier.Distillation(model=model, head_layer=0, temperature=2.0,
                                           label_weight=label_weight),
      teacher={'variables': teacher, 'classifier': {'kernel': head,
                                                    'bias': np.zeros(10, np.float32)}})


@pytest.mark.parametrize('label_weight', [0.0, 0.3])
def test_distillation_eight_devices_equal_one_device(tiny, label_weight):
  one = _distill(tiny, 1, label_weight)
  eight = _distill(tiny, 8, label_weight)
  np.testing.assert_allclose(eight['train_loss'], one['train_loss'], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(eight['variables']), jax.tree.leaves(one['variables'])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(eight['classifier']), jax.tree.leaves(one['classifier'])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # The student moved.
  assert not np.allclose(one['variables']['params']['encoder']['stem_conv']['kernel'],
                         tiny[1]['params']['encoder']['stem_conv']['kernel'])


def test_labelled_loss_changes_the_run(tiny):
  assert not np.allclose(_distill(tiny, 1, 0.0)['classifier']['kernel'],
                         _distill(tiny, 1, 0.3)['classifier']['kernel'])


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('distill'))
  config = helpers.tiny_eval_config()
  config.distill.epochs = 0.1  # 60 images: 2 steps of 32
  config.distill.batch_size = 32
  run.train_and_evaluate(config, workdir, mode='pretrain')
  return config, workdir


def test_distill_mode_teacher_then_student(pretrained):
  config, workdir = pretrained
  finetuned = run.train_and_evaluate(config, workdir, mode='finetune')
  results = run.train_and_evaluate(config, workdir, mode='distill')
  # The teacher is the finetune protocol's run, read back, not trained again.
  assert results['distill_10pct_teacher_top1'] == finetuned['finetune_10pct_top1']
  assert 0 <= results['distill_10pct_top1'] <= results['distill_10pct_top5'] <= 1
  assert results['distill_10pct_steps'] == 2 and results['distill_10pct_student'] == '18x0.125'


def test_distill_mode_big_to_small_with_labels(pretrained):
  config, workdir = pretrained
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.init_checkpoint = workdir
    config.distill.student_width_multiplier = 0.0625
    config.distill.label_weight = 0.5
  results = run.train_and_evaluate(config, workdir + '_small', mode='distill')
  assert results['distill_10pct_student'] == '18x0.0625'


def test_labelled_loss_on_streamed_data_names_the_fix(pretrained, monkeypatch):
  config, workdir = pretrained
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.distill.label_weight = 0.5
  monkeypatch.setattr(data_lib.EvalData, 'in_memory', property(lambda self: False))
  with pytest.raises(defaults.ConfigError, match='label_weight'):
    run.train_and_evaluate(config, workdir, mode='distill')
