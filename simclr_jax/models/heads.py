"""Projection head g(.), the encoder + head + online probe model, and the config-driven builder.

The head follows the official SimCLR `projection_head`: every layer is Dense (no bias) + BN;
hidden layers end in ReLU and their BN has an offset (beta); the last layer's BN has no offset
(center=False) and no ReLU, so z is a batch-normalised linear map of the last hidden layer.
"""

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from simclr_jax.models.resnet import CIFAR_STEM_MAX_SIDE, ResNet

HEAD_MODES = ('none', 'linear', 'nonlinear')
PROBE_KEY = 'probe'  # top-level param key of the online linear probe (ContrastiveModel)
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class ProjectionHead(nn.Module):
  """Projection MLP that returns the output of every layer.

  Parameter names: layer i (from 1) is `dense_{i}` + `bn_{i}`.

  Attributes:
    mode: 'nonlinear' (num_layers Dense+BN layers, ReLU between them), 'linear' (one Dense+BN
      to out_dim) or 'none' (z = h).
    num_layers: layers of the nonlinear head (2: SimCLR, 3: SimCLRv2); ignored otherwise.
    out_dim: width of z.
    hidden_dim: width of the hidden layers; -1 (default) keeps the input width, as SimCLR does
      (Barlow Twins' projector is 8192 wide on a 2048-wide h).
    dtype: compute dtype; parameters are float32 and outputs are returned as float32.
    axis_name: mapped axis for cross-replica BN statistics, or None.
    bn_momentum: decay of the BN running statistics.
    bn_epsilon: BN variance epsilon.
  """
  mode: str = 'nonlinear'
  num_layers: int = 2
  out_dim: int = 128
  hidden_dim: int = -1
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  def __post_init__(self) -> None:
    if self.mode not in HEAD_MODES:
      raise ValueError(f'ProjectionHead mode must be one of {HEAD_MODES}, got {self.mode!r}.')
    if self.mode == 'nonlinear' and self.num_layers < 1:
      raise ValueError(f'ProjectionHead num_layers must be >= 1, got {self.num_layers!r}.')
    if self.out_dim < 1:
      raise ValueError(f'ProjectionHead out_dim must be >= 1, got {self.out_dim!r}.')
    if self.hidden_dim != -1 and self.hidden_dim < 1:
      raise ValueError(f'ProjectionHead hidden_dim must be -1 or >= 1, got {self.hidden_dim!r}.')
    super().__post_init__()

  @nn.compact
  def __call__(self, h: jax.Array, *, train: bool) -> list[jax.Array]:
    """Projects representations.

    Args:
      h: representations [B, D].
      train: BN uses batch statistics and updates the running ones (`batch_stats` mutable).

    Returns:
      [h, layer_1, ..., layer_n], all float32: hidden layers are [B, hidden_dim] ([B, D] when
      hidden_dim is -1), the last one (z) is
      [B, out_dim]. 'none' returns [h]; 'linear' returns [h, z].
    """
    outputs = [h.astype(jnp.float32)]
    if self.mode == 'none':
      return outputs
    num_layers = self.num_layers if self.mode == 'nonlinear' else 1
    norm = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        axis_name=self.axis_name,
        dtype=self.dtype,
        param_dtype=jnp.float32)
    hidden_dim = h.shape[-1] if self.hidden_dim == -1 else self.hidden_dim
    x = h
    for i in range(1, num_layers + 1):
      last = i == num_layers
      # No Dense bias: the BN right after removes any constant offset.
      x = nn.Dense(
          self.out_dim if last else hidden_dim,
          use_bias=False,
          dtype=self.dtype,
          param_dtype=jnp.float32,
          name=f'dense_{i}')(x)
      # The last BN has no beta (center=False), as in the official SimCLR code.
      x = norm(use_bias=not last, name=f'bn_{i}')(x)
      if not last:
        x = nn.relu(x)
      outputs.append(x.astype(jnp.float32))
    return outputs


class ContrastiveModel(nn.Module):
  """Encoder f, projection head g and an online linear probe on stop_gradient(h).

  Parameters: {'encoder': ..., 'head': ..., 'probe': ...}.

  Attributes:
    encoder: the ResNet.
    head: the projection head.
    num_classes: classes of the online linear probe.
    probe_input: what the probe reads, an index into head_outputs (0 = h; 1 = the first
      projection layer, where the official SimCLRv2 fine-tuned models' classifier reads).
  """
  encoder: ResNet
  head: ProjectionHead
  num_classes: int
  probe_input: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               fine_tune_after_block: int = -1) -> dict[str, Any]:
    """Runs encoder, head and probe.

    Args:
      x: images [B, H, W, C], float in [0, 1].
      train: training mode for BN (see ResNet and ProjectionHead).
      fine_tune_after_block: passed to the encoder (-1..4).

    Returns:
      dict with h [B, D], z [B, out_dim] (= h for mode 'none'), head_outputs (list, see
      ProjectionHead) and probe_logits [B, num_classes], all float32.
    """
    h = self.encoder(x, train=train, fine_tune_after_block=fine_tune_after_block)
    head_outputs = self.head(h, train=train)
    # stop_gradient: the probe only measures h during pretraining, it must not shape it.
    if not 0 <= self.probe_input < len(head_outputs):
      raise ValueError(f'model.probe_input must be in 0..{len(head_outputs) - 1} (h and the '
                       f'projection layers), got {self.probe_input!r}.')
    probe_logits = nn.Dense(self.num_classes, param_dtype=jnp.float32, name=PROBE_KEY)(
        jax.lax.stop_gradient(head_outputs[self.probe_input]))
    return dict(h=h, z=head_outputs[-1], head_outputs=head_outputs, probe_logits=probe_logits)


def compute_dtype(name: str, backend: Optional[str] = None):
  """The compute dtype of config.model.dtype: 'float32', 'bfloat16', or 'auto' (bfloat16 on TPU
  and GPU, float32 on a CPU, whose bfloat16 matmuls and convolutions are emulated and slower).
  Parameters, optimizer state, BN statistics and the losses stay float32 in every case."""
  if name == 'auto':
    name = 'float32' if (backend or jax.default_backend()) == 'cpu' else 'bfloat16'
  if name not in DTYPES:
    raise ValueError(f"config.model.dtype must be one of {sorted(DTYPES) + ['auto']}, got "
                     f'{name!r}.')
  return DTYPES[name]


def build_model(model_config: ml_collections.ConfigDict, *, num_classes: int, image_size: int,
                axis_name: Optional[str] = None) -> ContrastiveModel:
  """Builds the ContrastiveModel described by `config.model` (see simclr_jax/defaults.py).

  Args:
    model_config: config.model: depth, width_multiplier, cifar_stem, stem_max_pool, sk_ratio,
      stage_projection, max_pool_padding, dtype ('float32' |
      'bfloat16' | 'auto', see `compute_dtype`), bn_momentum, bn_epsilon, head_mode, head_num_layers, head_out_dim,
      head_hidden_dim, conv_impl ('xla' | 'im2col' | 'auto').
    num_classes: classes of the online linear probe.
    image_size: side of the input views; picks the stem when model_config.cifar_stem is None.
    axis_name: mapped axis for cross-replica BN, or None.

  Returns:
    An unbound ContrastiveModel.
  """
  dtype = compute_dtype(model_config.dtype)
  cifar_stem = model_config.cifar_stem
  if cifar_stem is None:
    # Resolved here, from the configured size, so the choice is visible before any tracing.
    cifar_stem = image_size <= CIFAR_STEM_MAX_SIDE
  encoder = ResNet(
      depth=model_config.depth,
      width_multiplier=model_config.width_multiplier,
      cifar_stem=cifar_stem,
      stem_max_pool=model_config.get('stem_max_pool', True),
      # .get: configs saved before the fields existed still load.
      sk_ratio=model_config.get('sk_ratio', 0.0),
      stage_projection=model_config.get('stage_projection', 'needed'),
      max_pool_padding=model_config.get('max_pool_padding', 'symmetric'),
      dtype=dtype,
      axis_name=axis_name,
      bn_momentum=model_config.bn_momentum,
      bn_epsilon=model_config.bn_epsilon,
      # .get: configs saved before the field existed still load.
      conv_impl=model_config.get('conv_impl', 'xla'))
  head = ProjectionHead(
      mode=model_config.head_mode,
      num_layers=model_config.head_num_layers,
      out_dim=model_config.head_out_dim,
      # .get: configs saved before the field existed still load.
      hidden_dim=model_config.get('head_hidden_dim', -1),
      dtype=dtype,
      axis_name=axis_name,
      bn_momentum=model_config.bn_momentum,
      bn_epsilon=model_config.bn_epsilon)
  return ContrastiveModel(encoder=encoder, head=head, num_classes=num_classes,
                          probe_input=model_config.get('probe_input', 0))
