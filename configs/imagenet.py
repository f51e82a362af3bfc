"""SimCLR on ImageNet with the paper's defaults (ResNet-50 1x, batch 4096, 100 epochs).

Run (TPU pod; imagenet2012 must be prepared in TFDS's data_dir, see docs/data.md):
  python -m simclr_jax.main --config=configs/imagenet.py --workdir=gs://BUCKET/simclr_in \
    --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets

Paper (Chen et al. 2020, Table 6 / B.6): LARS, lr 0.3 x B/256 = 4.8, weight decay 1e-6,
temperature 0.1, 10 warmup epochs then cosine, 2-layer head to 128-d, colour strength 1.0 with
blur, global BN: linear-eval top-1 64.5% after 100 epochs at batch 4096 (69.3% after 1000).
"""

from configs import base


def get_config():
  c = base.get_config()
  c.dataset.name = 'imagenet2012'
  c.dataset.image_size = 224
  c.augment.preset = 'imagenet'
  c.augment.color_strength = 1.0
  c.augment.blur = True
  c.model.depth = 50
  c.model.width_multiplier = 1.0
  c.model.head_mode = 'nonlinear'
  c.model.head_num_layers = 2
  c.model.head_out_dim = 128
  c.batch_size = 4096
  c.num_epochs = 100
  c.loss.temperature = 0.1
  c.optimizer.name = 'lars'
  c.optimizer.learning_rate = 0.3
  c.optimizer.lr_scaling = 'linear'  # 0.3 * 4096 / 256 = 4.8
  c.optimizer.weight_decay = 1e-6
  c.optimizer.warmup_epochs = 10
  c.checkpoint_every_steps = 5000
  c.log_every_steps = 100
  c.eval.batch_size = 1024
  return c
