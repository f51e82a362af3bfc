"""CPU default for Barlow Twins on real Fashion-MNIST, built on configs/fashion_mnist_fast.py.

Run:
  python -m simclr_jax.main --config=configs/barlow_twins_fashion_mnist.py --workdir=/tmp/bt_fmnist

Same data, augmentation, encoder (ResNet-18 at width 0.5, ImageNet stem), batch, epochs and
evaluation as the fast SimCLR recipe, so the methods compare side by side. The projector is
scaled down from the paper's 8192-8192-8192 to 512-512-512 (h is 256-d here, against 2048 for
ResNet-50); lambda stays at the paper's 0.0051. LARS as in the paper, with the biases' and BN's
rate at the paper's 0.0048 / 0.2 of the weights' rate, but the weights' rate is 1.0 x B/256
(the fast SimCLR recipe's), not the paper's 0.2: in 5-minute runs (docs/benchmarks.md, quality)
0.2 / 0.5 / 1.0 / 2.0 gave linear top-1 0.819 / 0.822 / 0.835 / 0.828; a 1024-wide projector
(0.814) and lambda 0.02 (0.815) were worse at 0.2.
Targets: this project's own measurements (docs/benchmarks.md).
"""

from simclr_jax import defaults

fashion_mnist_fast = defaults.config_file(__file__, 'fashion_mnist_fast')

# The paper's ratio of the biases' and BN's rate to the weights' (0.0048 / 0.2).
_BIAS_RATE_SCALE = 0.0048 / 0.2


def get_config():
  c = fashion_mnist_fast.get_config()
  c.method = 'barlow_twins'
  c.model.head_mode = 'nonlinear'
  c.model.head_num_layers = 3
  c.model.head_hidden_dim = 512
  c.model.head_out_dim = 512
  c.barlow_twins.lambd = 0.0051
  # LARS at 1.0 x B/256 for the weights: fashion_mnist's, kept.
  c.optimizer.bias_learning_rate_scale = _BIAS_RATE_SCALE
  c.optimizer.weight_decay = 1.5e-6
  return c
