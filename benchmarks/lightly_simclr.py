"""lightly's SimCLR on a PyTorch mirror of our encoder, for the quality benchmark.

  pip install -r benchmarks/requirements-torch.txt   # in its own venv: see that file
  python benchmarks/lightly_simclr.py --data=DATA.npz --out=FEATURES.npz --minutes=15

Run by benchmarks/quality.py, which writes DATA.npz (`pretrain_images` uint8 [N, 28, 28, 1],
`train_images` / `test_images` float32 [M, 28, 28, 1] in [0, 1]) and evaluates the features this
script writes (`train_h`, `test_h`) with simclr_jax's own linear / kNN code; with
--weights_out it also saves the encoder's weights, which quality.py loads into the JAX encoder to
fine-tune them with simclr_jax's own fine-tuning code.

What comes from lightly: `lightly.loss.NTXentLoss` and `lightly.models.modules.
SimCLRProjectionHead`. What mirrors the JAX config (quality.py passes its fields as flags; the
defaults here are configs/fashion_mnist_fast.py's): the encoder (ResNet-18 v1.5, ImageNet stem, width
0.5: `torch_train_step.ResNet18`, in PyTorch's channels_last layout), head widths (h -> h -> 64),
temperature 0.1, batch 256, LARS or
SGD (`torch_train_step.Lars`, as simclr_jax.optim's two; `--optimizer`, `--lr_scaling`) at
1.0 x B / 256 with a linear warmup and cosine decay over the time budget, and the augmentation (written here as batched torch tensor ops, the same
distributions as our tf.data pipeline, so both rows see the same views, not torchvision's
per-image transforms): random resized crop (area U[0.2, 1], aspect
log-U[3/4, 4/3], first of 10 tries that fits, else the whole image) resized bicubically, flip
p=0.5, and with p=0.8 brightness (x b) and contrast (about the per-image mean, x c), b, c ~
U[0.6, 1.4], in random order, each clipped to [0, 1]. Differences left: torch's bicubic kernel
(a = -0.75) vs TensorFlow's (a = -0.5); random numbers are torch's, not the JAX pipeline's.

The budget is wall time, as simclr_jax's `config.time_budget_minutes` (simclr_jax/time_budget.py):
the clock starts when the first step returns, the learning rate at progress p = elapsed /
budget is warmup (p < --warmup_fraction) then cosine to 0 at p = 1, and training stops there.

If lightly does not import (its packages import torchvision at import time), prints one JSON
line {"blocked": "<error>"} and exits with status 3; nothing of lightly is copied here.
"""

import argparse
import json
import math
import os
import sys
import time
import traceback

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_train_step  # pylint: disable=g-import-not-at-top,wrong-import-position

EXIT_BLOCKED = 3
ASPECT_RANGE = (3 / 4, 4 / 3)
CROP_TRIES = 10
JITTER_P = 0.8
JITTER_PER_STRENGTH = 0.8  # brightness/contrast factors in 1 +- 0.8 x color_strength


def import_lightly():
  """(NTXentLoss, SimCLRProjectionHead, version), or raises ImportError with the reason."""
  try:
    import lightly  # pylint: disable=g-import-not-at-top
    from lightly.loss import NTXentLoss  # pylint: disable=g-import-not-at-top
    from lightly.models.modules import SimCLRProjectionHead  # pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except
    frame = traceback.extract_tb(e.__traceback__)[-1]
    version = getattr(sys.modules.get('lightly'), '__version__', 'not installed')
    raise ImportError(f'lightly {version}: {type(e).__name__}: {e} (at {frame.filename}:'
                      f'{frame.lineno}: {frame.line})') from e
  return NTXentLoss, SimCLRProjectionHead, lightly.__version__


def augment(images: torch.Tensor, gen: torch.Generator, *, crop_area_min: float,
            color_strength: float) -> torch.Tensor:
  """One random view per image: crop+resize, flip, brightness/contrast. [B,C,H,W] in [0, 1]."""
  b, _, height, width = images.shape
  u = lambda *shape: torch.rand(*shape, generator=gen)  # pylint: disable=unnecessary-lambda-assignment
  jitter_range = JITTER_PER_STRENGTH * color_strength
  area = (crop_area_min + (1 - crop_area_min) * u(b, CROP_TRIES)) * height * width
  log_ratio = math.log(ASPECT_RANGE[0]) + (
      math.log(ASPECT_RANGE[1]) - math.log(ASPECT_RANGE[0])) * u(b, CROP_TRIES)
  crop_w = torch.round(torch.sqrt(area * torch.exp(log_ratio)))
  crop_h = torch.round(torch.sqrt(area / torch.exp(log_ratio)))
  fits = (crop_w >= 1) & (crop_w <= width) & (crop_h >= 1) & (crop_h <= height)
  first = torch.argmax(fits.int(), dim=1, keepdim=True)
  any_fits = fits.any(dim=1)
  # Fallback (no candidate fits): the whole (square) image.
  crop_w = torch.where(any_fits, crop_w.gather(1, first)[:, 0], torch.tensor(float(width)))
  crop_h = torch.where(any_fits, crop_h.gather(1, first)[:, 0], torch.tensor(float(height)))
  off_x = torch.floor(u(b) * (width - crop_w + 1))
  off_y = torch.floor(u(b) * (height - crop_h + 1))
  # Affine map from output coordinates in [-1, 1] (pixel edges, align_corners=False) onto the
  # crop window [off, off + size] of the input.
  theta = torch.zeros(b, 2, 3)
  theta[:, 0, 0] = crop_w / width
  theta[:, 0, 2] = (2 * off_x + crop_w) / width - 1
  theta[:, 1, 1] = crop_h / height
  theta[:, 1, 2] = (2 * off_y + crop_h) / height - 1
  grid = F.affine_grid(theta, list(images.shape), align_corners=False)
  x = F.grid_sample(images, grid, mode='bicubic', padding_mode='border', align_corners=False)
  x = x.clamp(0, 1)
  flip = (u(b) < 0.5).view(b, 1, 1, 1)
  x = torch.where(flip, x.flip(-1), x)
  apply = (u(b) < JITTER_P).view(b, 1, 1, 1)
  bright = (1 + jitter_range * (2 * u(b) - 1)).clamp(min=0).view(b, 1, 1, 1)
  contrast = (1 + jitter_range * (2 * u(b) - 1)).view(b, 1, 1, 1)
  bright_first = (u(b) < 0.5).view(b, 1, 1, 1)

  def adjust_brightness(y):
    return (y * bright).clamp(0, 1)

  def adjust_contrast(y):
    mean = y.mean(dim=(2, 3), keepdim=True)
    return ((y - mean) * contrast + mean).clamp(0, 1)

  jittered = torch.where(bright_first, adjust_contrast(adjust_brightness(x)),
                         adjust_brightness(adjust_contrast(x)))
  return torch.where(apply, jittered, x)


def learning_rate(progress: float, *, peak: float, warmup_fraction: float) -> float:
  """Linear warmup from 0 over the first `warmup_fraction` of the budget, then cosine to 0 at
  progress 1 (simclr_jax.optim.learning_rate_schedule at step progress * S)."""
  progress = min(progress, 1.0)
  if progress < warmup_fraction:
    return peak * progress / warmup_fraction
  return peak * 0.5 * (1 + math.cos(math.pi * (progress - warmup_fraction) /
                                    (1 - warmup_fraction)))


class SimCLR(torch.nn.Module):
  """Our encoder mirror + lightly's projection head."""

  def __init__(self, head_cls, *, channels: int, width_multiplier: float, cifar_stem: bool,
               out_dim: int):
    super().__init__()
    self.encoder = torch_train_step.ResNet18(channels, width_multiplier, cifar_stem)
    d = self.encoder.dim
    self.head = head_cls(input_dim=d, hidden_dim=d, output_dim=out_dim)

  def forward(self, x):
    return self.head(self.encoder(x))


def train(pretrain_images: np.ndarray, *, budget_s: float, args: argparse.Namespace,
          lightly_parts, on_step=None) -> tuple[SimCLR, float, int]:
  """Pretrains for `budget_s` seconds (the first step, PyTorch's warm-up, not counted) with the
  model/optimizer/augmentation flags of `args`; returns (model, last loss, steps)."""
  ntxent_cls, head_cls, _ = lightly_parts
  batch_size = args.batch_size
  torch.manual_seed(args.seed)
  gen = torch.Generator().manual_seed(args.seed)
  rng = np.random.default_rng(args.seed)
  images = torch.from_numpy(pretrain_images).permute(0, 3, 1, 2).float() / 255.
  # channels_last: PyTorch's fast CPU convolution layout (benchmarks/torch_train_step.py; the
  # Fashion-MNIST model's step on 2 AVX2 cores: 0.50 s against 0.81 s contiguous).
  fmt = getattr(torch, args.memory_format)
  model = SimCLR(head_cls, channels=images.shape[1], width_multiplier=args.width_multiplier,
                 cifar_stem=args.cifar_stem, out_dim=args.head_out_dim)
  model = model.to(memory_format=fmt).train()
  criterion = ntxent_cls(temperature=args.temperature)
  lars = torch_train_step.Lars(model.parameters(), lr=0.0, weight_decay=args.weight_decay,
                               trust=args.optimizer == 'lars')
  peak = args.learning_rate * (batch_size / 256 if args.lr_scaling == 'linear' else 1.0)
  view = lambda x: augment(x, gen, crop_area_min=args.crop_area_min,  # pylint: disable=unnecessary-lambda-assignment
                           color_strength=args.color_strength)
  order = np.zeros((0,), np.int64)
  loss = float('nan')
  step, progress, start = 0, 0.0, None
  while progress < 1:
    if order.shape[0] < batch_size:  # per-epoch permutations, full batches only
      order = rng.permutation(images.shape[0])
    idx, order = order[:batch_size], order[batch_size:]
    batch = images[torch.from_numpy(idx)]
    view_1, view_2 = (view(batch).contiguous(memory_format=fmt) for _ in range(2))
    for p in model.parameters():
      p.grad = None
    total = criterion(model(view_1), model(view_2))
    total.backward()
    lars.lr = learning_rate(progress, peak=peak, warmup_fraction=args.warmup_fraction)
    lars.step()
    loss = total.item()  # also syncs, so the clock and on_step timings are real
    if not math.isfinite(loss):
      raise FloatingPointError(f'loss became {loss} at step {step}')
    step += 1
    start = start if start is not None else time.perf_counter()
    progress = (time.perf_counter() - start) / budget_s
    if on_step is not None:
      on_step()
  return model, loss, step


@torch.no_grad()
def features(model: SimCLR, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
  """h of the frozen encoder (BN running statistics). images: [N, H, W, C] float in [0, 1]."""
  model.eval()
  out = []
  for i in range(0, images.shape[0], batch_size):
    x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).permute(0, 3, 1, 2)
    out.append(model.encoder(x.float()).numpy())
  return np.concatenate(out)


def _rate(times: list[float]) -> float:
  """Steps per second between the first and the last of these step-end times."""
  return (len(times) - 1) / (times[-1] - times[0])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--check_import', action='store_true',
                      help='only check that lightly imports (JSON line; exit 0 or 3).')
  parser.add_argument('--data', help='npz written by benchmarks/quality.py.')
  parser.add_argument('--out', help='npz to write train_h, test_h to.')
  parser.add_argument('--weights_out', default='',
                      help='npz to write the pretrained encoder state_dict to (torch names, '
                      'numpy arrays), for fine-tuning it with simclr_jax (quality.py).')
  parser.add_argument('--minutes', type=float, default=15.0, help='pretraining budget.')
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--temperature', type=float, default=0.1)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--width_multiplier', type=float, default=0.5)
  parser.add_argument('--cifar_stem', type=int, choices=(0, 1), default=0)
  parser.add_argument('--head_out_dim', type=int, default=64)
  parser.add_argument('--learning_rate', type=float, default=1.0,
                      help='x batch_size / 256 with --lr_scaling=linear.')
  parser.add_argument('--lr_scaling', choices=('linear', 'none'), default='linear')
  parser.add_argument('--optimizer', choices=('lars', 'sgd'), default='lars',
                      help="simclr_jax.optim's lars, or its sgd (the same without the trust "
                      'ratio).')
  parser.add_argument('--weight_decay', type=float, default=1e-6)
  parser.add_argument('--warmup_fraction', type=float, default=0.03,
                      help='share of the budget in warmup (configs/fashion_mnist_fast.py: 0.3 of '
                      '10 epochs).')
  parser.add_argument('--crop_area_min', type=float, default=0.2)
  parser.add_argument('--color_strength', type=float, default=0.5)
  parser.add_argument('--memory_format', choices=('channels_last', 'contiguous_format'),
                      default='channels_last',
                      help='layout of the model and views (until 2026-12-01: contiguous_format).')
  args = parser.parse_args()
  try:
    lightly_parts = import_lightly()
  except ImportError as e:
    print(json.dumps({'blocked': str(e)}))
    sys.exit(EXIT_BLOCKED)
  if args.check_import:
    print(json.dumps({'lightly_version': lightly_parts[2]}))
    return
  if not args.data or not args.out:
    parser.error('--data and --out are required')
  data = np.load(args.data)
  pretrain_images = data['pretrain_images']
  times = []
  t0 = time.time()
  model, loss, steps = train(pretrain_images, budget_s=args.minutes * 60, args=args,
                             lightly_parts=lightly_parts,
                             on_step=lambda: times.append(time.perf_counter()))
  minutes = (time.time() - t0) / 60
  np.savez(args.out, train_h=features(model, data['train_images']),
           test_h=features(model, data['test_images']))
  if args.weights_out:
    np.savez(args.weights_out, **{k: v.detach().numpy()
                                  for k, v in model.encoder.state_dict().items()})
  print(json.dumps(dict(
      steps=steps, pretrain_minutes=minutes,
      images_per_s=_rate(times) * args.batch_size,
      train_loss=loss, lightly_version=lightly_parts[2], torch_version=torch.__version__,
      threads=torch.get_num_threads())))


if __name__ == '__main__':
  main()
