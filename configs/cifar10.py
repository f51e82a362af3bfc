"""SimCLR on CIFAR-10 as in the paper's appendix B.9 (ResNet-50 CIFAR stem, batch 1024).

Run (accelerator; TFDS downloads cifar10 on first use):
  python -m simclr_jax.main --config=configs/cifar10.py --workdir=gs://BUCKET/simclr_cifar10

Paper (Chen et al. 2020, B.9, Figure B.7): ResNet-50, batch 1024, temperature 0.5, colour strength
0.5, no blur, LARS lr 1.0 x B/256 (= 4.0), weight decay 1e-6, 10 warmup epochs, 1000 epochs:
linear-eval top-1 ~94.0% (500 epochs ~93%).
"""

from simclr_jax import defaults


def get_config():
  c = defaults.get_config()
  c.dataset.name = 'cifar10'
  c.dataset.image_size = 32
  c.augment.preset = 'cifar'
  c.augment.crop_sampler = 'tf_bounding_box'  # the official code's crop (docs/parity.md)
  c.augment.color_strength = 0.5
  c.augment.blur = False
  c.model.depth = 50
  c.model.cifar_stem = True
  c.batch_size = 1024
  c.num_epochs = 1000
  c.loss.temperature = 0.5
  c.optimizer.learning_rate = 1.0
  c.optimizer.lr_scaling = 'linear'
  c.optimizer.weight_decay = 1e-6
  c.optimizer.warmup_epochs = 10
  c.checkpoint_every_steps = 2000
  c.log_every_steps = 100
  return c
