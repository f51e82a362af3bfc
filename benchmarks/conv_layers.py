"""Per-layer convolution timings: each conv_impl (and PyTorch) on ResNet-18's conv shapes.

  python benchmarks/conv_layers.py --batch_size=128 --impls=auto,xla,im2col [--torch]

For every 3x3 conv shape of ResNet-18 (CIFAR stem, 32x32 input; `--image_size` scales the maps)
at 2N views, times the forward, the input gradient and the weight gradient separately (each
its own jitted function; medians of `--steps` after a warm-up), for each `--impls` entry of
`config.model.conv_impl`, and with `--torch` PyTorch's channels_last convolution (oneDNN) on the
same shapes. Applies the trainer's XLA flags (simclr_jax/defaults.py `xla_flags`) first. This is
where the choice of `conv.cpu_impl` per layer comes from; the whole step is benchmarks/compare_cpu.py.

Prints a table (ms per direction and their sum) and one JSON line.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from simclr_jax import defaults  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import xla_setup  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_integer('batch_size', 128, 'N images (2N views per layer call).')
flags.DEFINE_integer('image_size', 32, 'Input side; stage s runs at image_size / 2^s.')
flags.DEFINE_list('impls', ['auto', 'xla', 'im2col'], 'conv_impl values to time.')
flags.DEFINE_bool('torch', False, 'Also time PyTorch (channels_last) on the same shapes.')
flags.DEFINE_integer('steps', 5, 'Timed calls per direction (median reported).')
FLAGS = flags.FLAGS

# (stage map divisor, Cin, Cout, stride): ResNet-18's 3x3 convs, first conv of each stage and the
# stride-1 conv that follows.
LAYERS = [(1, 64, 64, 1), (1, 64, 128, 2), (2, 128, 128, 1), (2, 128, 256, 2), (4, 256, 256, 1),
          (4, 256, 512, 2), (8, 512, 512, 1)]


def _median_ms(fn, steps):
  fn()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return 1000 * sorted(times)[len(times) // 2]


def _jax_times(impl, views, size, cin, cout, stride, steps):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from simclr_jax.models import conv  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((views, size, size, cin)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) * 0.05, jnp.float32)
  f = lambda a, k: conv.conv2d(a, k, strides=(stride, stride), padding=((1, 1), (1, 1)),
                               impl=impl)
  dy = jnp.ones_like(f(x, kernel))
  forward = jax.jit(f)
  input_grad = jax.jit(lambda a, k, g: jax.vjp(lambda b: f(b, k), a)[1](g))
  weight_grad = jax.jit(lambda a, k, g: jax.vjp(lambda b: f(a, b), k)[1](g))
  return [_median_ms(lambda: jax.block_until_ready(forward(x, kernel)), steps),
          _median_ms(lambda: jax.block_until_ready(input_grad(x, kernel, dy)), steps),
          _median_ms(lambda: jax.block_until_ready(weight_grad(x, kernel, dy)), steps)]


def _torch_times(views, size, cin, cout, stride, steps):
  import torch  # pylint: disable=g-import-not-at-top
  x = torch.randn(views, cin, size, size).to(memory_format=torch.channels_last)
  layer = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False).to(
      memory_format=torch.channels_last)
  with torch.no_grad():
    dy = torch.ones_like(layer(x))

  def forward():
    with torch.no_grad():
      layer(x)

  # The backward alone, as the JAX columns time it: one forward kept, its graph reused.
  xx = x.detach().requires_grad_(True)
  y = layer(xx)
  grad = lambda target: torch.autograd.grad(y, target, dy, retain_graph=True)
  return [_median_ms(forward, steps), _median_ms(lambda: grad(xx), steps),
          _median_ms(lambda: grad(layer.weight), steps)]


def main(_):
  xla_setup.apply_xla_flags(defaults.get_config().xla_flags)
  views = 2 * FLAGS.batch_size
  variants = list(FLAGS.impls) + (['torch'] if FLAGS.torch else [])
  rows = []
  for divisor, cin, cout, stride in LAYERS:
    size = FLAGS.image_size // divisor
    row = {'layer': f'{size}x{size} {cin}->{cout} s{stride}', 'ms': {}}
    for variant in variants:
      if variant == 'torch':
        row['ms'][variant] = _torch_times(views, size, cin, cout, stride, FLAGS.steps)
      else:
        row['ms'][variant] = _jax_times(variant, views, size, cin, cout, stride, FLAGS.steps)
    rows.append(row)
    cells = '  '.join(f'{v} ' + '/'.join(f'{t:.0f}' for t in ms) + f' = {sum(ms):.0f}'
                      for v, ms in row['ms'].items())
    print(f"{row['layer']:<20} fwd/dx/dw ms: {cells}", flush=True)
  totals = {v: sum(sum(r['ms'][v]) for r in rows) for v in variants}
  print('total ms (fwd + dx + dw over the layers): ' +
        ', '.join(f'{v} {t:.0f}' for v, t in totals.items()))
  print(json.dumps({'batch_size': FLAGS.batch_size, 'image_size': FLAGS.image_size,
                    'date': time.strftime('%Y-%m-%d'), 'cpu_count': os.cpu_count(),
                    'layers': rows, 'total_ms': totals}))


if __name__ == '__main__':
  app.run(main)
