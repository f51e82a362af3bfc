"""PyTorch (eager, channels_last) reference of the project's SimCLR train step, for CPU speed.

  pip install -r benchmarks/requirements-torch.txt
  python benchmarks/torch_train_step.py --batch_size=128 --steps=5

The same model and math as `benchmarks/train_step.py` at its defaults: ResNet-18 v1.5 with the
CIFAR stem (3x3/1 conv, no max-pool), He fan-out init, BN after every conv with the last BN of
each block zero-initialised, a 2-layer projection head Dense(512, no bias)+BN+ReLU ->
Dense(128, no bias)+BN(no offset), an online linear probe on h.detach(), NT-Xent over the 2N
views (temperature 0.5, self-similarity masked), and a LARS step (weight decay + trust ratio on
rank >= 2 weights, momentum with the learning rate inside the buffer, as simclr_jax.optim). The
probe gets plain momentum SGD. torchvision is not used (its PyPI wheels do not match the local
torch build); the ResNet is written here.

Prints a short table and one JSON line with the same keys as benchmarks/train_step.py where they
apply (images_per_s counts views: 2N per step).
"""

import argparse
import json
import resource
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


def conv_bn(cin: int, cout: int, kernel: int, stride: int, zero_gamma: bool = False):
  """Conv (symmetric padding (k-1)//2, no bias) + BN, with He fan-out init."""
  conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, bias=False)
  nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')
  # momentum 0.1 in torch = 0.9 decay in flax; eps as simclr_jax's default.
  bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
  if zero_gamma:
    nn.init.zeros_(bn.weight)
  return conv, bn


class BasicBlock(nn.Module):
  """Two 3x3 convs with BN, projection shortcut when the shape changes."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1, self.bn1 = conv_bn(cin, cout, 3, stride)
    self.conv2, self.bn2 = conv_bn(cout, cout, 3, 1, zero_gamma=True)
    self.proj = None
    if stride != 1 or cin != cout:
      conv, bn = conv_bn(cin, cout, 1, stride)
      self.proj = nn.Sequential(conv, bn)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    residual = x if self.proj is None else self.proj(x)
    return F.relu(residual + y)


class ResNet18(nn.Module):
  """ResNet-18 v1.5 ending at the global average pool (h), with either stem of
  simclr_jax.models.resnet: CIFAR (3x3/1 conv, no max-pool) or ImageNet (7x7/2 conv, then a
  3x3/2 max-pool with 1 pixel of padding)."""

  def __init__(self, channels: int = 3, width_multiplier: float = 1.0, cifar_stem: bool = True):
    super().__init__()
    w = lambda c: max(1, int(c * width_multiplier))  # pylint: disable=unnecessary-lambda-assignment
    self.stem_conv, self.stem_bn = conv_bn(channels, w(64), 3 if cifar_stem else 7,
                                           1 if cifar_stem else 2)
    self.stem_pool = nn.Identity() if cifar_stem else nn.MaxPool2d(3, 2, padding=1)
    blocks, cin = [], w(64)
    for stage in range(4):
      cout = w(64 * 2 ** stage)
      for j in range(2):
        blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and j == 0 else 1))
        cin = cout
    self.blocks = nn.Sequential(*blocks)
    self.dim = cin

  def forward(self, x):
    y = self.stem_pool(F.relu(self.stem_bn(self.stem_conv(x))))
    return self.blocks(y).mean(dim=(2, 3))


class ContrastiveModel(nn.Module):
  """Encoder + 2-layer head (last BN without offset) + online probe on h.detach()."""

  def __init__(self, channels: int, width_multiplier: float, out_dim: int, num_classes: int,
               cifar_stem: bool = True):
    super().__init__()
    self.encoder = ResNet18(channels, width_multiplier, cifar_stem)
    d = self.encoder.dim
    self.dense_1 = nn.Linear(d, d, bias=False)
    self.bn_1 = nn.BatchNorm1d(d, eps=1e-5, momentum=0.1)
    self.dense_2 = nn.Linear(d, out_dim, bias=False)
    self.bn_2 = nn.BatchNorm1d(out_dim, eps=1e-5, momentum=0.1)
    self.bn_2.bias.requires_grad_(False)  # center=False: no offset on z.
    self.probe = nn.Linear(d, num_classes)

  def forward(self, x):
    h = self.encoder(x)
    z = self.bn_2(self.dense_2(F.relu(self.bn_1(self.dense_1(h)))))
    return h, z, self.probe(h.detach())


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
  """NT-Xent over 2N views z = [z_a; z_b], each view's pair the positive, self masked."""
  z = F.normalize(z, dim=-1)
  n2 = z.shape[0]
  n = n2 // 2
  logits = z @ z.t() / temperature
  logits = logits - 1e9 * torch.eye(n2, dtype=z.dtype)
  pos = torch.cat([torch.arange(n, n2), torch.arange(0, n)])
  return F.cross_entropy(logits, pos)


class Lars:
  """LARS as simclr_jax.optim: g' = g + wd w; u = trust g' (rank >= 2); v = m v - lr u.
  With trust=False it is simclr_jax.optim's 'sgd' (the same chain without the trust ratio)."""

  def __init__(self, params, lr: float, weight_decay: float = 1e-6, momentum: float = 0.9,
               trust_coefficient: float = 0.001, trust: bool = True):
    self.params = [p for p in params if p.requires_grad]
    self.lr, self.wd, self.m, self.eta = lr, weight_decay, momentum, trust_coefficient
    self.trust = trust
    self.buf = [torch.zeros_like(p) for p in self.params]

  @torch.no_grad()
  def step(self):
    for p, v in zip(self.params, self.buf):
      g = p.grad
      if p.ndim >= 2:
        g = g + self.wd * p
        if self.trust:
          wn, gn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
          trust = torch.where((wn > 0) & (gn > 0), self.eta * wn / gn, torch.ones_like(wn))
          g = g * trust
      v.mul_(self.m).add_(g, alpha=-self.lr)
      p.add_(v)


def build(*, batch_size: int, image_size: int = 32, channels: int = 3,
          width_multiplier: float = 1.0, head_out_dim: int = 128, channels_last: bool = True,
          threads: int = 0, seed: int = 0, cifar_stem: bool = True):
  """The model, optimizers and one-step closure. Returns (step() -> loss float, model)."""
  torch.manual_seed(seed)
  if threads > 0:
    torch.set_num_threads(threads)
  model = ContrastiveModel(channels, width_multiplier, head_out_dim, num_classes=10,
                           cifar_stem=cifar_stem)
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  model = model.to(memory_format=fmt).train()
  probe_params = list(model.probe.parameters())
  probe_ids = {id(p) for p in probe_params}
  lars = Lars([p for p in model.parameters() if id(p) not in probe_ids],
              lr=0.3 * batch_size / 256)
  probe_opt = torch.optim.SGD(probe_params, lr=0.1, momentum=0.9)
  rng = np.random.default_rng(0)
  # Both views of every image, view a first: [2N, C, H, W] as the JAX step's split_views.
  views = torch.from_numpy(
      rng.uniform(size=(2 * batch_size, channels, image_size, image_size)).astype(np.float32))
  views = views.contiguous(memory_format=fmt)
  labels = torch.from_numpy(rng.integers(0, 10, batch_size)).long()
  labels2 = torch.cat([labels, labels])

  def step() -> float:
    for p in model.parameters():
      p.grad = None
    _, z, probe_logits = model(views)
    loss = nt_xent(z, temperature=0.5)
    total = loss + F.cross_entropy(probe_logits, labels2)
    total.backward()
    lars.step()
    probe_opt.step()
    return loss.detach().item()

  return step, model


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch_size', type=int, default=128, help='N images (2N views).')
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--channels', type=int, default=3)
  parser.add_argument('--width_multiplier', type=float, default=1.0)
  parser.add_argument('--head_out_dim', type=int, default=128)
  parser.add_argument('--memory_format', choices=('channels_last', 'contiguous'),
                      default='channels_last')
  parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default).')
  parser.add_argument('--cifar_stem', type=int, choices=(0, 1), default=1,
                      help='1: 3x3/1 stem conv (the issue-10 model); 0: 7x7/2 conv + max-pool.')
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--warmup_steps', type=int, default=2)
  args = parser.parse_args()
  step, _ = build(batch_size=args.batch_size, image_size=args.image_size, channels=args.channels,
                  width_multiplier=args.width_multiplier, head_out_dim=args.head_out_dim,
                  channels_last=args.memory_format == 'channels_last', threads=args.threads,
                  cifar_stem=bool(args.cifar_stem))
  for _ in range(args.warmup_steps):
    step()
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - t0)
  median = float(np.median(times))
  result = dict(
      framework='torch', torch_version=torch.__version__, threads=torch.get_num_threads(),
      memory_format=args.memory_format, depth=18, cifar_stem=bool(args.cifar_stem), width_multiplier=args.width_multiplier,
      image_size=args.image_size, batch_size=args.batch_size, dtype='float32',
      images_per_s=2 * args.batch_size / median, step_s_median=median,
      step_s_min=float(np.min(times)), step_s_max=float(np.max(times)),
      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, loss=loss)
  print(f"{'metric':<28}value")
  for k in ('images_per_s', 'step_s_median', 'peak_rss_mb'):
    print(f'{k:<28}{result[k]:.4g}')
  print(json.dumps(result))


if __name__ == '__main__':
  main()
