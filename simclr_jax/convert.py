"""Imports the official SimCLR checkpoints (v1 and v2) as simclr_jax checkpoints.

  python -m simclr_jax.convert --checkpoint=PATH --workdir=DIR [--config=configs/imagenet.py]
  python -m simclr_jax.main --config=DIR/config.py --workdir=DIR --mode=linear_eval

PATH is what the official code writes or its released models hold: a SavedModel directory
(`gs://simclr-checkpoints-tf2/simclrv2/pretrained/r50_1x_sk1/saved_model/`), a TF2 tf.train
checkpoint prefix (`.../ckpt-100`), a TF1 checkpoint prefix (`gs://simclr-checkpoints/simclrv2/
pretrained/r50_1x_sk1/model.ckpt-250228`) or a directory of them (the newest is read). The architecture (depth,
width, selective kernels, stem, projection head, supervised head) is read off the variables'
names and shapes, the weights are written as an Orbax checkpoint under DIR/checkpoints, and
DIR/config.py is the given config with that architecture, so every mode (linear_eval, knn,
finetune, transfer, embed_plot, the `probe` protocol) uses it as it uses a pretraining
workdir. The official supervised head (`head_supervised`) becomes the model's linear probe
(`params['probe']`), read from `model.probe_input`: h for SimCLRv1 and the pretrained SimCLRv2
models, the first projection layer (`--supervised_head_input=1`) for SimCLRv2's fine-tuned ones
(the official `ft_proj_selector`), which the names cannot tell apart.

TF2 variables are found by their attribute paths in the checkpoint's object graph, TF1 ones
(auto-numbered `base_model/conv2d_<n>`, `batch_normalization_<n>`) by the order in which the TF1
code creates its layers (`_tf1_layout`). The official code's layout is kept exactly (TensorFlow's SAME max-pool, a projection shortcut
in the first block of every stage): a converted model's h, projection layers and logits equal
the official ones (tests/test_convert.py, on fixtures written by the official code).
"""

import os
import re
from typing import Any, Optional

import numpy as np

from simclr_jax.models import resnet as resnet_lib

SAVED_MODEL_FILE = 'saved_model.pb'
# Keys of the official TF2 objects (tf.train.Checkpoint(model=...) and the SavedModel export
# share them: both roots hold the Keras model as `model`).
_RESNET = 'model/resnet_model/'
_HEAD = 'model/_projection_head/linear_layers/'
_SUPERVISED = 'model/supervised_head/linear_layer/dense/'
_OBJECT_GRAPH = '_CHECKPOINTABLE_OBJECT_GRAPH'
# Object-graph edges that Keras and tf.function add beside a model's own attributes.
_BOOKKEEPING = frozenset((
    'variables', 'trainable_variables', 'non_trainable_variables', 'regularization_losses',
    'keras_api', 'metrics', 'layer_regularization_losses', 'layer_metrics', '__call__',
    'call_and_return_all_conditional_losses', 'call_and_return_conditional_losses', 'signatures',
    'trainable_variables_list', '_jit_compiled_convolution_op', 'optimizer', 'save_counter',
    'global_step'))
_BN = {'gamma': ('params', 'scale'), 'beta': ('params', 'bias'),
       'moving_mean': ('batch_stats', 'mean'), 'moving_variance': ('batch_stats', 'var')}
_TF1_SCOPES = ('base_model/', 'head_contrastive/', 'head_supervised/')
_TF1_LEAVES = ('kernel', 'bias', 'gamma', 'beta', 'moving_mean', 'moving_variance')
# Released models' selective-kernel ratio; the mixing width max(int(filters * r), 32) shows r
# only where it exceeds 32.
RELEASED_SK_RATIO = 0.0625


# Our stem's parameter-name suffixes: the plain stem's one conv, the ResNet-D stem's three.
STEM_SUFFIXES = {False: ('',), True: ('_a', '_b', '')}


class ConversionError(ValueError):
  """The checkpoint is not an official SimCLR model this converter reads."""


def checkpoint_prefix(path: str) -> str:
  """The tf.train checkpoint prefix that holds the variables of `path` (module docstring)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if tf.io.gfile.isdir(path):
    if tf.io.gfile.exists(os.path.join(path, SAVED_MODEL_FILE)):
      return os.path.join(path, 'variables', 'variables')
    # The directory's `checkpoint` file names the newest prefix, often by the absolute path of
    # the machine that trained it (a gs:// bucket, a TPU VM): look for it here by its name.
    state = tf.train.get_checkpoint_state(path)
    if state is not None and state.model_checkpoint_path:
      for candidate in (state.model_checkpoint_path,
                        os.path.join(path, os.path.basename(state.model_checkpoint_path))):
        if tf.io.gfile.exists(candidate + '.index'):
          return candidate
    indexes = tf.io.gfile.glob(os.path.join(path, '*.index'))
    if indexes:  # the highest step number
      step = lambda p: int(m.group(1)) if (m := re.search(r'(\d+)\.index$', p)) else -1
      return max(indexes, key=lambda p: (step(p), p))[:-len('.index')]
    raise ConversionError(f'{path} holds neither a SavedModel ({SAVED_MODEL_FILE}) nor a '
                          'tf.train checkpoint (*.index): pass the saved_model directory or '
                          'a checkpoint prefix such as .../ckpt-100')
  if not tf.io.gfile.exists(path + '.index'):
    raise ConversionError(f'no checkpoint at {path} (looked for {path}.index); pass a '
                          'SavedModel directory, a checkpoint directory or a prefix')
  return path


def read_variables(path: str) -> dict[str, np.ndarray]:
  """The official model's variables of `path`: TF2 object paths under 'model/' (checkpoints and
  SavedModels of the TF2 code), or TF1 variable names under 'base_model/', 'head_contrastive/'
  and 'head_supervised/' (the TF1 code's `model.ckpt-*`); optimizer slots are left out."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  reader = tf.train.load_checkpoint(checkpoint_prefix(path))
  out = {}
  keys = reader.get_variable_to_shape_map()
  if _OBJECT_GRAPH in keys:  # TF2: every object path that reaches a variable
    for object_path, key in _object_paths(reader.get_tensor(_OBJECT_GRAPH)):
      if object_path.startswith('model/'):
        out[object_path] = np.asarray(reader.get_tensor(key))
  for key in keys:
    if key.startswith(_TF1_SCOPES) and key.rsplit('/', 1)[-1] in _TF1_LEAVES:
      out[key] = np.asarray(reader.get_tensor(key))
  if not out:
    names = sorted(reader.get_variable_to_shape_map())[:5]
    raise ConversionError(
        f'{path} has no variables of an official SimCLR model (TF2 object paths under model/, '
        f'or TF1 names under base_model/; found e.g. {names})')
  return out


def _object_paths(serialized_graph: bytes):
  """(object path, checkpoint key) of every variable of a TF2 checkpoint, along each path of
  attribute names from the root. A SavedModel keys a variable by the first path Keras's
  bookkeeping reaches it on (`model/resnet_model/variables/12`); the attribute path of the
  official code (`model/resnet_model/block_groups/0/layers/0/conv2d_bn_layers/0/conv2d/kernel`)
  is in the object graph beside it, which is what is read here. Keras's bookkeeping edges
  (variable lists, traced functions, metrics) are not followed."""
  from tensorflow.core.protobuf import trackable_object_graph_pb2  # pylint: disable=g-import-not-at-top
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(serialized_graph)
  stack = [((0,), ())]  # (node ids from the root, attribute names)
  while stack:
    nodes, path = stack.pop()
    for attribute in graph.nodes[nodes[-1]].attributes:
      if attribute.name == 'VARIABLE_VALUE' and path:
        yield '/'.join(path), attribute.checkpoint_key
    for child in graph.nodes[nodes[-1]].children:
      name = child.local_name
      if name in _BOOKKEEPING or name.startswith('trace_') or child.node_id in nodes:
        continue
      stack.append((nodes + (child.node_id,), path + (name,)))


def _units(variables: dict, prefix: str) -> list[tuple[str, dict]]:
  """The layers of an official layer list (`prefix`{i}/...), in order, each as (kind, vars):
  'conv' {kernel}, 'bn' {gamma, beta, moving_*} or 'sk' {its own sub-units}; layers without
  variables (padding, pooling, dropblock) are skipped."""
  by_index: dict[int, dict] = {}
  pattern = re.compile(re.escape(prefix) + r'(\d+)/(.*)')
  for key, value in variables.items():
    m = pattern.fullmatch(key)
    if m:
      by_index.setdefault(int(m.group(1)), {})[m.group(2)] = value
  units = []
  for _, leaves in sorted(by_index.items()):
    if 'conv2d/kernel' in leaves:
      units.append(('conv', leaves['conv2d/kernel']))
    elif any(k.startswith('bn/') for k in leaves):
      units.append(('bn', {k[len('bn/'):]: v for k, v in leaves.items()}))
    elif 'conv2d_fixed_padding/conv2d/kernel' in leaves:
      units.append(('sk', leaves))
    else:
      raise ConversionError(f'unknown official layer under {prefix}: {sorted(leaves)}')
  return units


def _put_bn(params: dict, stats: dict, name: str, bn: dict) -> None:
  for official, (collection, ours) in _BN.items():
    if official in bn:
      (params if collection == 'params' else stats).setdefault(name, {})[ours] = bn[official]


def _sk_unit(leaves: dict) -> tuple[dict, dict]:
  params = {'conv': {'kernel': leaves['conv2d_fixed_padding/conv2d/kernel']},
            'mix_dense_1': {'kernel': leaves['conv2d_0/kernel'].reshape(
                leaves['conv2d_0/kernel'].shape[-2:])},
            'mix_dense_2': {'kernel': leaves['conv2d_1/kernel'].reshape(
                leaves['conv2d_1/kernel'].shape[-2:])}}
  stats: dict = {}
  for prefix, name in (('batch_norm_relu/bn/', 'bn'), ('batch_norm_relu_1/bn/', 'mix_bn')):
    _put_bn(params, stats, name, {k[len(prefix):]: v for k, v in leaves.items()
                                  if k.startswith(prefix)})
  return params, stats


def _chain(units, names_conv, params: dict, stats: dict) -> None:
  """Maps a block's (or the stem's) units onto our names: conv{n} / bn{n} / conv{n}_sk."""
  n = 0
  for kind, value in units:
    if kind == 'conv':
      params[names_conv(n)[0]] = {'kernel': value}
    elif kind == 'bn':
      _put_bn(params, stats, names_conv(n)[1], value)
      n += 1
    else:
      p, s = _sk_unit(value)
      params[f'conv{n + 1}_sk'] = p
      stats[f'conv{n + 1}_sk'] = s
      n += 1


def encoder_variables(variables: dict) -> tuple[dict, dict, dict]:
  """(params, batch_stats, architecture) of the official ResNet, in simclr_jax's layout."""
  params: dict = {}
  stats: dict = {}
  stem = _units(variables, _RESNET + 'initial_conv_relu_max_pool/')
  convs = [v for kind, v in stem if kind == 'conv']
  if len(convs) not in (1, 3):
    raise ConversionError(f'the official stem has {len(convs)} convolutions; expected 1 or 3')
  suffixes = STEM_SUFFIXES[len(convs) == 3]
  _chain(stem, lambda n: (f'stem_conv{suffixes[n]}', f'stem_bn{suffixes[n]}'), params, stats)
  cifar_stem = len(convs) == 1 and convs[0].shape[0] == 3
  width = convs[-1].shape[-1] / 64
  group_re = re.compile(re.escape(_RESNET) + r'block_groups/(\d+)/layers/(\d+)/')
  blocks = sorted({tuple(map(int, m.groups())) for m in map(group_re.match, variables) if m})
  stage_sizes = tuple(sum(1 for g, _ in blocks if g == i) for i in range(resnet_lib.NUM_STAGES))
  bottleneck = False
  sk_mid, sk_filters = [], []
  for g, b in blocks:
    prefix = f'{_RESNET}block_groups/{g}/layers/{b}/'
    name = f'stage{g + 1}_block{b + 1}'
    block_params: dict = {}
    block_stats: dict = {}
    main_list = 'conv2d_bn_layers/'
    if any(k.startswith(prefix + 'conv_relu_dropblock_layers/') for k in variables):
      main_list, bottleneck = 'conv_relu_dropblock_layers/', True
    main = _units(variables, prefix + main_list)
    _chain(main, lambda n: (f'conv{n + 1}', f'bn{n + 1}'), block_params, block_stats)
    for kind, leaves in main:
      if kind == 'sk':
        sk_mid.append(leaves['conv2d_0/kernel'].shape[-1])
        sk_filters.append(leaves['conv2d_fixed_padding/conv2d/kernel'].shape[-1] // 2)
    shortcut = _units(variables, prefix + ('projection_layers/' if bottleneck else
                                           'shortcut_layers/'))
    _chain(shortcut, lambda n: ('proj_conv', 'proj_bn'), block_params, block_stats)
    params[name] = block_params
    if block_stats:
      stats[name] = block_stats
  depth = next((d for d, (kind, sizes) in resnet_lib.STAGE_SIZES.items()
                if sizes == stage_sizes and (kind == 'bottleneck') == bottleneck), None)
  if depth is None:
    kind = 'bottleneck' if bottleneck else 'basic'
    raise ConversionError(f'no ResNet depth has {stage_sizes} {kind} blocks per stage')
  sk_ratio = 0.0
  if len(convs) == 3:  # ResNet-D: the official code builds it exactly when sk_ratio > 0
    wide = [m / f for m, f in zip(sk_mid, sk_filters) if m > resnet_lib.SK_MIN_DIM]
    sk_ratio = wide[0] if wide else RELEASED_SK_RATIO
  arch = dict(depth=depth, width_multiplier=float(width), sk_ratio=float(sk_ratio),
              cifar_stem=bool(cifar_stem), stage_projection='always', max_pool_padding='same',
              stem_max_pool=True)
  return params, stats, arch


def _tf1_numbered(variables: dict, layer: str) -> list[dict]:
  """TF1 auto-named layers base_model/<layer>, <layer>_1, <layer>_2, ... in creation order."""
  pattern = re.compile(r'base_model/' + layer + r'(?:_(\d+))?/(\w+)')
  found: dict[int, dict] = {}
  for key, value in variables.items():
    m = pattern.fullmatch(key)
    if m:
      found.setdefault(int(m.group(1) or 0), {})[m.group(2)] = value
  if sorted(found) != list(range(len(found))):
    raise ConversionError(f'the TF1 {layer} layers are not numbered 0..{len(found) - 1}')
  return [found[i] for i in range(len(found))]


def _tf1_layout(stem: str, stage_sizes, bottleneck: bool, sk: bool) -> list[tuple[str, tuple]]:
  """Our encoder's parameter paths in the order the official TF1 code creates its layers
  (resnet.py: stem; per block the projection shortcut, then the main path; a selective-kernel
  conv's 3x3 conv, BN, mixing 1x1 conv, BN, mixing 1x1 conv), each as (kind, path), kind
  'conv' (a 4-d kernel), 'dense' (a 1x1 conv kept as a Dense kernel) or 'bn'."""
  out = []
  for suffix in STEM_SUFFIXES[stem == 'sk']:
    out += [('conv', (f'stem_conv{suffix}',)), ('bn', (f'stem_bn{suffix}',))]
  for stage, blocks in enumerate(stage_sizes, start=1):
    for j in range(blocks):
      name = f'stage{stage}_block{j + 1}'
      if j == 0:
        out += [('conv', (name, 'proj_conv')), ('bn', (name, 'proj_bn'))]
      out += [('conv', (name, 'conv1')), ('bn', (name, 'bn1'))]
      if bottleneck and sk:
        sk_path = (name, 'conv2_sk')
        out += [('conv', sk_path + ('conv',)), ('bn', sk_path + ('bn',)),
                ('dense', sk_path + ('mix_dense_1',)), ('bn', sk_path + ('mix_bn',)),
                ('dense', sk_path + ('mix_dense_2',))]
      else:
        out += [('conv', (name, 'conv2')), ('bn', (name, 'bn2'))]
      if bottleneck:
        out += [('conv', (name, 'conv3')), ('bn', (name, 'bn3'))]
  return out


def encoder_variables_tf1(variables: dict) -> tuple[dict, dict, dict]:
  """(params, batch_stats, architecture) of the official TF1 ResNet (`base_model/conv2d_N`,
  `base_model/batch_normalization_N`): the depth is the one whose layer count in the official
  creation order matches, the layers are assigned in that order."""
  convs = [v['kernel'] for v in _tf1_numbered(variables, 'conv2d')]
  bns = _tf1_numbered(variables, 'batch_normalization')
  if not convs:
    raise ConversionError('no base_model/conv2d layers: not an official TF1 SimCLR checkpoint')
  if convs[0].shape[0] == 7:
    stem = 'imagenet'
  elif len(convs) > 1 and convs[1].shape[:2] == (3, 3):
    stem = 'sk'
  else:
    stem = 'cifar'
  layout = None
  for d, (kind, sizes) in resnet_lib.STAGE_SIZES.items():
    candidate = _tf1_layout(stem, sizes, kind == 'bottleneck', stem == 'sk')
    if (sum(k != 'bn' for k, _ in candidate) == len(convs)
        and sum(k == 'bn' for k, _ in candidate) == len(bns)):
      layout, depth, bottleneck = candidate, d, kind == 'bottleneck'
  if layout is None:
    raise ConversionError(f'no ResNet depth has {len(convs)} convolutions and {len(bns)} BN '
                          'layers in the official TF1 layout')
  params: dict = {}
  stats: dict = {}
  conv_iter, bn_iter = iter(convs), iter(bns)
  for kind, path in layout:
    *parents, leaf = path
    p_node, s_node = params, stats
    for part in parents:
      p_node, s_node = p_node.setdefault(part, {}), s_node.setdefault(part, {})
    if kind == 'bn':
      _put_bn(p_node, s_node, leaf, next(bn_iter))
    else:
      kernel = next(conv_iter)
      p_node[leaf] = {'kernel': kernel.reshape(kernel.shape[-2:]) if kind == 'dense' else kernel}
  mids = [params[b]['conv2_sk']['mix_dense_1']['kernel'].shape for b in params
          if 'conv2_sk' in params[b]]
  wide = [m[1] / m[0] for m in mids if m[1] > resnet_lib.SK_MIN_DIM]
  sk_ratio = (wide[0] if wide else RELEASED_SK_RATIO) if stem == 'sk' else 0.0
  stem_conv = params['stem_conv']['kernel']
  arch = dict(depth=depth, width_multiplier=float(stem_conv.shape[-1] / 64),
              sk_ratio=float(sk_ratio), cifar_stem=stem == 'cifar', stage_projection='always',
              max_pool_padding='same', stem_max_pool=True)
  del bottleneck
  return params, stats, arch


def _tf1_head_as_tf2(variables: dict) -> dict:
  """The TF1 heads' variables under the TF2 object paths (the same layers, other names):
  head_contrastive/nl_<j> (or l_0) -> projection layer j, head_supervised -> supervised head."""
  out = {}
  for key, value in variables.items():
    m = re.fullmatch(r'head_contrastive/n?l_(\d+)/(dense|batch_normalization)/(\w+)', key)
    if m:
      part = 'dense' if m.group(2) == 'dense' else 'bn_relu/bn'
      out[f'{_HEAD}{m.group(1)}/{part}/{m.group(3)}'] = value
    m = re.fullmatch(r'head_supervised/linear_layer/dense/(\w+)', key)
    if m:
      out[_SUPERVISED + m.group(1)] = value
  return out


def head_variables(variables: dict, representation_dim: int) -> tuple[dict, dict, dict]:
  """(params, batch_stats, head config) of the official projection head ({} when absent, as in
  the released SimCLRv1 models)."""
  pattern = re.compile(re.escape(_HEAD) + r'(\d+)/(.*)')
  layers: dict[int, dict] = {}
  for key, value in variables.items():
    m = pattern.fullmatch(key)
    if m:
      layers.setdefault(int(m.group(1)), {})[m.group(2)] = value
  if not layers:
    return {}, {}, dict(head_mode='none', head_num_layers=2, head_out_dim=representation_dim,
                        head_hidden_dim=-1)
  params: dict = {}
  stats: dict = {}
  for j, leaves in sorted(layers.items()):
    params[f'dense_{j + 1}'] = {'kernel': leaves['dense/kernel']}
    _put_bn(params, stats, f'bn_{j + 1}', {k[len('bn_relu/bn/'):]: v for k, v in leaves.items()
                                           if k.startswith('bn_relu/bn/')})
  n = len(layers)
  hidden = params['dense_1']['kernel'].shape[-1] if n > 1 else -1
  return params, stats, dict(
      head_mode='nonlinear', head_num_layers=n,
      head_out_dim=int(params[f'dense_{n}']['kernel'].shape[-1]),
      head_hidden_dim=-1 if hidden in (-1, representation_dim) else int(hidden))


def convert_variables(variables: dict, *, supervised_head_input: int = 0):
  """Official variables (read_variables, TF2 or TF1) -> ({'params', 'batch_stats'}, fields).

  The model fields are config.model entries (depth, width_multiplier, sk_ratio, cifar_stem,
  stage_projection, max_pool_padding, head_*, probe_input) plus 'num_classes' of the supervised
  head (None when the checkpoint has none; the probe then starts at zero)."""
  if any(k.startswith('base_model/') for k in variables):  # the TF1 code's names
    enc_params, enc_stats, arch = encoder_variables_tf1(variables)
    variables = _tf1_head_as_tf2(variables)
  else:
    enc_params, enc_stats, arch = encoder_variables(variables)
  dim = resnet_lib.representation_dim(arch['depth'], arch['width_multiplier'])
  head_params, head_stats, head = head_variables(variables, dim)
  params = {'encoder': enc_params, 'head': head_params}
  stats = {'encoder': enc_stats, 'head': head_stats}
  num_classes = None
  if _SUPERVISED + 'kernel' in variables:
    kernel = variables[_SUPERVISED + 'kernel']
    num_classes = int(kernel.shape[-1])
    bias = variables.get(_SUPERVISED + 'bias', np.zeros(num_classes, kernel.dtype))
    params['probe'] = {'kernel': kernel, 'bias': bias}
  num_layers = head['head_num_layers'] if head['head_mode'] != 'none' else 0
  if not 0 <= supervised_head_input <= num_layers:
    raise ConversionError(f'--supervised_head_input={supervised_head_input}: the model has h '
                          f'(0) and {num_layers} projection layers')
  return ({'params': params, 'batch_stats': stats},
          {**arch, **head, 'probe_input': int(supervised_head_input), 'num_classes': num_classes})


def _fill(template: Any, converted: Any, path: str = '') -> Any:
  """`converted` in the structure of `template` (a model's init variables), checked leaf by
  leaf; entries the checkpoint lacks (a missing supervised head) keep the template's zeros."""
  if isinstance(template, dict):
    converted = converted or {}
    extra = set(converted) - set(template)
    if extra:
      raise ConversionError(f'{path or "variables"}: the checkpoint has {sorted(extra)}, which '
                            'the inferred architecture lacks')
    return {k: _fill(v, converted.get(k), f'{path}/{k}') for k, v in template.items()}
  if converted is None:
    return np.zeros(template.shape, template.dtype)
  if tuple(converted.shape) != tuple(template.shape):
    raise ConversionError(f'{path}: the checkpoint holds shape {tuple(converted.shape)}, the '
                          f'inferred architecture {tuple(template.shape)}')
  return np.asarray(converted, np.float32)


def model_variables(model, variables: dict, *, image_shape: tuple) -> dict:
  """`variables` (convert_variables) checked against `model`'s own and in its structure."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  template = jax.eval_shape(lambda: model.init(jax.random.key(0, impl='rbg'),
                                               jnp.zeros((1,) + tuple(image_shape)),
                                               train=False))
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), dict(template))
  return {k: _fill(template[k], variables.get(k), k) for k in ('params', 'batch_stats')}


CONFIG_TEMPLATE = '''"""simclr_jax.convert wrote this: {base} with the architecture of
{checkpoint}."""

import importlib.util


def get_config():
  spec = importlib.util.spec_from_file_location('simclr_jax_base_config', {base!r})
  base = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(base)
  c = base.get_config()
{assignments}
  return c
'''


def convert(checkpoint: str, workdir: str, *, base_config: str,
            supervised_head_input: int = 0, image_size: Optional[int] = None) -> dict:
  """Reads the official checkpoint, writes workdir/checkpoints and workdir/config.py.

  Returns the config.model fields it set (and num_classes)."""
  from simclr_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from simclr_jax import defaults  # pylint: disable=g-import-not-at-top
  from simclr_jax import metric_writer  # pylint: disable=g-import-not-at-top
  from simclr_jax.models import build_model  # pylint: disable=g-import-not-at-top
  variables, fields = convert_variables(read_variables(checkpoint),
                                        supervised_head_input=supervised_head_input)
  base = os.path.abspath(base_config)
  config = defaults.config_file(base, os.path.splitext(os.path.basename(base))[0]).get_config()
  num_classes = fields.pop('num_classes')
  for k, v in fields.items():
    config.model[k] = v
  size = image_size or config.dataset.image_size
  model = build_model(config.model, num_classes=num_classes or 1000, image_size=size)
  variables = model_variables(model, variables, image_shape=(size, size, 3))
  metric_writer.makedirs(workdir)
  ckpt = checkpoint_lib.Checkpointer(workdir)
  if ckpt.all_steps():
    raise ConversionError(f'{ckpt.directory} already holds checkpoints; convert into an empty '
                          'workdir')
  ckpt.save(0, {'step': np.zeros((), np.int32), **variables})
  ckpt.close()
  assignments = '\n'.join(f'  c.model.{k} = {v!r}' for k, v in fields.items())
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(os.path.join(workdir, 'config.py'), 'w') as f:
    f.write(CONFIG_TEMPLATE.format(base=base, checkpoint=checkpoint, assignments=assignments))
  return {**fields, 'num_classes': num_classes}


def main(argv):
  """`python -m simclr_jax.convert` (module docstring)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  fields = convert(f.checkpoint, f.workdir, base_config=f.config,
                   supervised_head_input=f.supervised_head_input)
  print(f'converted {f.checkpoint} -> {f.workdir}/checkpoints; architecture: {fields}\n'
        f'evaluate: python -m simclr_jax.main --config={f.workdir}/config.py '
        f'--workdir={f.workdir} --mode=linear_eval')


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('checkpoint', None, 'An official SavedModel directory, checkpoint prefix '
                      'or checkpoint directory (local or gs://).')
  flags.DEFINE_string('workdir', None, 'Empty directory for the converted checkpoint and config.')
  flags.DEFINE_string('config', os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), 'configs', 'imagenet.py'),
                      'The config the converted model is evaluated with (its model fields are '
                      'replaced by the checkpoint\'s architecture).')
  flags.DEFINE_integer('supervised_head_input', 0, 'What the official supervised head reads: '
                       '0 = h (SimCLRv1, pretrained SimCLRv2), 1 = the first projection layer '
                       '(SimCLRv2 fine-tuned models, the official ft_proj_selector).')
  flags.mark_flags_as_required(['checkpoint', 'workdir'])
  app.run(main)
