"""CPU default for MoCo v2 on real Fashion-MNIST, built on configs/fashion_mnist_fast.py.

Run:
  python -m simclr_jax.main --config=configs/moco_fashion_mnist.py --workdir=/tmp/moco_fmnist

Everything but the method and the temperature (MoCo v2's 0.2; the fast SimCLR recipe's is 0.1)
is the fast SimCLR recipe's (data, augmentation, encoder, MLP head, batch, epochs, LARS schedule,
evaluation), so a side-by-side run compares the methods alone. The paper's SGD recipe is in
configs/moco_v2_imagenet.py. MoCo settings follow the official CIFAR-10 MoCo demo, scaled to a
CPU run of a few thousand steps: K = 4096 (= 16 global batches), m = 0.99 (0.999 averages over
~1000 steps, a large part of this run, so the key encoder would lag far behind), symmetric loss
(both views as queries; costs two forward passes per encoder per step).
Targets: this project's own measurements (docs/benchmarks.md).
"""

from simclr_jax import defaults

fashion_mnist_fast = defaults.config_file(__file__, 'fashion_mnist_fast')


def get_config():
  c = fashion_mnist_fast.get_config()
  c.method = 'moco'
  c.loss.temperature = 0.2  # MoCo v2's value
  c.moco.queue_size = 16 * c.batch_size
  c.moco.momentum = 0.99
  c.moco.symmetric = True
  return c
