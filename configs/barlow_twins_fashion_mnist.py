"""CPU default for Barlow Twins on real Fashion-MNIST, the counterpart of configs/fashion_mnist.py.

Run:
  python -m simclr_jax.main --config=configs/barlow_twins_fashion_mnist.py --workdir=/tmp/bt_fmnist

Same data, augmentation, encoder (ResNet-18 at width 1/4), batch, epochs and evaluation as the
SimCLR CPU default, so the methods compare side by side. The projector is scaled down from the
paper's 8192-8192-8192 to 512-512-512 (h is 128-d here, against 2048 for ResNet-50: the same
4x widening); lambda stays at the paper's 0.0051. Optimizer as the paper (LARS, lr 0.2 x B/256 for
weights and 0.0048 x B/256 for biases and BN), with the SimCLR CPU default's short warmup.
Targets: this project's own measurements (docs/benchmarks.md).
"""

from configs import fashion_mnist

_WEIGHT_LEARNING_RATE = 0.2
_BIAS_LEARNING_RATE = 0.0048


def get_config():
  c = fashion_mnist.get_config()
  c.method = 'barlow_twins'
  c.model.head_mode = 'nonlinear'
  c.model.head_num_layers = 3
  c.model.head_hidden_dim = 512
  c.model.head_out_dim = 512
  c.barlow_twins.lambd = 0.0051
  c.optimizer.name = 'lars'
  c.optimizer.learning_rate = _WEIGHT_LEARNING_RATE
  c.optimizer.lr_scaling = 'linear'
  c.optimizer.bias_learning_rate_scale = _BIAS_LEARNING_RATE / _WEIGHT_LEARNING_RATE
  c.optimizer.weight_decay = 1.5e-6
  return c
