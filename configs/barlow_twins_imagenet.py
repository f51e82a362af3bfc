"""Barlow Twins on ImageNet with the paper's defaults (ResNet-50, batch 2048, 1000 epochs).

Run (TPU pod / multi-GPU; imagenet2012 prepared in TFDS's data_dir, see docs/data.md):
  python -m simclr_jax.main --config=configs/barlow_twins_imagenet.py --workdir=gs://BUCKET/bt \
    --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets

Paper (Zbontar et al. 2021, Sec. 4 and the official code): projector 8192-8192-8192, lambda =
0.0051, LARS (eta 0.001, momentum 0.9) with lr 0.2 x B/256 for weights and 0.0048 x B/256 for
biases and BN parameters (which get neither weight decay nor LARS adaptation), weight decay 1.5e-6,
10 warmup epochs then cosine, batch 2048, 1000 epochs: linear-eval top-1 73.2%.
Deviations from the official code are listed in docs/methods.md.
"""

from simclr_jax import defaults

imagenet = defaults.config_file(__file__, 'imagenet')

_WEIGHT_LEARNING_RATE = 0.2
_BIAS_LEARNING_RATE = 0.0048


def get_config():
  c = imagenet.imagenet_data_and_eval(defaults.get_config())
  c.method = 'barlow_twins'
  c.augment.color_strength = 0.5  # paper: jitter (0.4, 0.4, 0.2, 0.1); ours (0.4, 0.4, 0.4, 0.1)
  c.augment.blur = True
  c.model.depth = 50
  c.model.width_multiplier = 1.0
  c.model.head_mode = 'nonlinear'
  c.model.head_num_layers = 3
  c.model.head_hidden_dim = 8192
  c.model.head_out_dim = 8192
  c.batch_size = 2048
  c.num_epochs = 1000
  c.barlow_twins.lambd = 0.0051
  c.optimizer.name = 'lars'
  c.optimizer.learning_rate = _WEIGHT_LEARNING_RATE
  c.optimizer.lr_scaling = 'linear'  # 0.2 * 2048 / 256 = 1.6
  c.optimizer.bias_learning_rate_scale = _BIAS_LEARNING_RATE / _WEIGHT_LEARNING_RATE
  c.optimizer.weight_decay = 1.5e-6
  c.optimizer.momentum = 0.9
  c.optimizer.trust_coefficient = 0.001
  c.optimizer.warmup_epochs = 10
  c.checkpoint_every_steps = 5000
  c.log_every_steps = 100
  return c
