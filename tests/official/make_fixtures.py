"""Writes the official-code fixtures that tests/test_convert.py checks the converter against.

Runs the official SimCLR model code (google-research/simclr: the TF2 code in `tf2/` and the
TF1 code at the top level; not part of this repository) on real Fashion-MNIST images and saves,
per architecture, what the official code writes and computes:

  <name>.tar.xz
    ckpt/ckpt.index, ckpt/ckpt.data-*   TF2: tf.train.Checkpoint(model, global_step, optimizer),
                                        as the official tf2/run.py saves during training
    saved_model/                        TF2: tf2/run.py's SavedModel export (`build_saved_model`)
    tf1/model.ckpt-0.*                  TF1 (names tf1_*): tf.train.Saver over the TF1 graph
                                        (resnet.resnet_v1 under base_model/, model_util's heads),
                                        with the step and the LARS momentum slots
    outputs.npz                         images [N, S, S, 3] in [0, 1] and, in eval mode, h
                                        (final_avg_pool), head_1..head_n (every projection layer)
                                        and logits_sup (the supervised head)
    spec.json                           depth, width, sk_ratio, head layers, ft_proj_selector

Weights: every kernel is a fixed random pattern of a prime length (1,009) over {-s, 0, 0, +s}
(s from the layer's fan-in), repeated over the tensor with a shift of one per repeat, so the
archives stay small while no two channels are alike (a transposed or permuted kernel changes
the outputs); BN gammas, betas, running means and variances and the supervised bias come from a
few values each. (Running statistics measured on images instead leave near-constant channels
with variances near 0, whose BN gain of up to 1/sqrt(eps) makes float32 round-off of 1e-4 in
either implementation.) The official code needs TensorFlow 2.21 with tf_keras
(`pip install "tf_keras==2.21.*"`); this script sets TF_USE_LEGACY_KERAS=1 itself.

  git clone https://github.com/google-research/simclr /tmp/official_simclr
  python tests/official/make_fixtures.py --official=/tmp/official_simclr --out=tests/official
"""

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile

os.environ['TF_USE_LEGACY_KERAS'] = '1'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
# name -> (depth, width_multiplier, sk_ratio, num_proj_layers, ft_proj_selector)
SPECS = {
    'r18_1x_sk0': (18, 1, 0.0, 2, 0),        # SimCLRv1-style head, classifier on h
    'r18_2x_sk1': (18, 2, 0.0625, 3, 1),     # ResNet-D stem and shortcuts, basic blocks
    'r50_1x_sk0': (50, 1, 0.0, 3, 0),
    'r50_1x_sk1': (50, 1, 0.0625, 3, 1),     # the released SimCLRv2 r50_1x_sk1 layout
    # The TF1 code (its residual_block cannot build selective-kernel ResNet-18/34: the ResNet-D
    # shortcut replaces the main path's input, so the shapes do not meet).
    'tf1_r18_1x_sk0': (18, 1, 0.0, 2, 0),
    'tf1_r50_1x_sk1': (50, 1, 0.0625, 3, 1),
}
IMAGE_SIDE = 56  # 28 px upscaled 2x: even sides, where TF's SAME max-pool differs from pad 1
NUM_IMAGES = 8
NUM_CLASSES = 10
PATTERN = 1009


def fashion_mnist(split: str, n: int) -> np.ndarray:
  """First n images of a split as float32 RGB [n, 56, 56, 3] in [0, 1] (exact k / 255)."""
  with gzip.open(os.path.join(FASHION_MNIST, f'{split}-images-idx3-ubyte.gz')) as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
  images = np.kron(images, np.ones((2, 2), np.uint8))  # nearest-neighbour 2x
  return np.repeat(images[..., None], 3, axis=-1).astype(np.float32) / 255.0


def pattern_values(shape, values, rng) -> np.ndarray:
  """`values` drawn into a pattern of PATTERN entries, repeated over `shape` with a shift of
  one entry per repeat (entry n is pattern[(n + n // PATTERN) % PATTERN])."""
  pattern = rng.choice(np.asarray(values, np.float32), size=PATTERN)
  n = np.arange(int(np.prod(shape)))
  return pattern[(n + n // PATTERN) % PATTERN].reshape(shape)


def set_weights(variables, assign, rng) -> None:
  """Pattern values into every variable (module docstring)."""
  for v in variables:
    name = v.name
    shape = v.shape.as_list()
    if 'moving_mean' in name:
      value = pattern_values(shape, [-0.1, 0.0, 0.1], rng)
    elif 'moving_variance' in name:
      value = pattern_values(shape, [0.5, 1.0, 2.0], rng)
    elif 'gamma' in name:
      value = pattern_values(shape, [0.5, 1.0, 1.5], rng)
    elif 'beta' in name:
      value = pattern_values(shape, [-0.25, 0.0, 0.25], rng)
    elif 'bias' in name:
      value = pattern_values(shape, [-0.1, 0.0, 0.1], rng)
    elif 'kernel' in name:
      fan_in = int(np.prod(shape[:-1]))
      s = np.float32(np.sqrt(4.0 / fan_in))
      value = pattern_values(shape, [-s, 0.0, 0.0, s], rng)
    else:
      raise ValueError(f'unexpected variable {name}')
    assign(v, value)


def build(official_tf2: str, depth, width, sk_ratio, num_proj_layers, selector):
  sys.path.insert(0, official_tf2)
  from absl import flags  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import run  # pylint: disable=g-import-not-at-top,unused-import  (defines the flags)
  import model as model_lib  # pylint: disable=g-import-not-at-top
  import lars_optimizer  # pylint: disable=g-import-not-at-top
  flags_ = flags.FLAGS
  if not flags_.is_parsed():
    flags_(['make_fixtures'])
  flags_.resnet_depth = depth
  flags_.width_multiplier = width
  flags_.sk_ratio = sk_ratio
  flags_.num_proj_layers = num_proj_layers
  flags_.ft_proj_selector = selector
  flags_.train_mode = 'finetune'
  flags_.image_size = IMAGE_SIDE
  flags_.global_bn = False
  tf.keras.utils.set_random_seed(0)
  model = model_lib.Model(NUM_CLASSES)
  return tf, run, model, lars_optimizer


def make_tf1(name: str, official: str, root: str) -> dict:
  """The TF1 graph in eval mode, saved with tf.train.Saver; returns its outputs."""
  depth, width, sk_ratio, num_proj_layers, selector = SPECS[name]
  sys.path.insert(0, official)
  from absl import flags  # pylint: disable=g-import-not-at-top
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  tf.disable_eager_execution()
  for flag, value in dict(global_bn=False, batch_norm_decay=0.9, sk_ratio=sk_ratio, se_ratio=0.0,
                          train_mode='finetune', fine_tune_after_block=-1,
                          proj_head_mode='nonlinear', proj_out_dim=128,
                          num_proj_layers=num_proj_layers, ft_proj_selector=selector,
                          optimizer='lars', momentum=0.9, weight_decay=1e-6,
                          use_tpu=False).items():
    define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
              str: flags.DEFINE_string}[type(value)]
    define(flag, value, '')
  flags.FLAGS(['make_fixtures'])
  import resnet  # pylint: disable=g-import-not-at-top
  import model_util  # pylint: disable=g-import-not-at-top
  import lars_optimizer  # pylint: disable=g-import-not-at-top
  images = fashion_mnist('t10k', NUM_IMAGES)
  tf.set_random_seed(0)
  x = tf.placeholder(tf.float32, [None, IMAGE_SIDE, IMAGE_SIDE, 3])
  with tf.variable_scope('base_model'):
    h = resnet.resnet_v1(depth, width, cifar_stem=False)(x, is_training=False)
  selected = model_util.projection_head(h, is_training=False)
  logits = model_util.supervised_head(selected, NUM_CLASSES, is_training=False)
  graph = tf.get_default_graph()
  heads = []
  for j in range(num_proj_layers):
    out = graph.get_tensor_by_name(f'head_contrastive/nl_{j}/nl_{j}_out:0')
    heads.append(tf.nn.relu(out) if j != num_proj_layers - 1 else out)
  step = tf.train.get_or_create_global_step()
  train_op = lars_optimizer.LARSOptimizer(0.0, momentum=0.9).minimize(
      tf.reduce_sum(logits), global_step=step)
  del train_op  # only creates the momentum slots, which stay zero
  with tf.Session() as sess:
    sess.run(tf.global_variables_initializer())
    model_vars = [v for v in tf.global_variables()
                  if v.op.name.startswith(('base_model/', 'head_contrastive/', 'head_supervised/'))
                  and 'Momentum' not in v.op.name]
    set_weights(model_vars, lambda v, value: v.load(value, sess),
                np.random.default_rng(sum(map(ord, name))))
    values = sess.run({'h': h, 'logits_sup': logits, 'selected': selected,
                       **{f'head_{j + 1}': t for j, t in enumerate(heads)}}, {x: images})
    tf.train.Saver().save(sess, os.path.join(root, 'tf1', 'model.ckpt'), global_step=0)
  all_hidden = [values['h']] + [values[f'head_{j + 1}'] for j in range(num_proj_layers)]
  np.testing.assert_array_equal(values.pop('selected'), all_hidden[selector])
  return {'images': images, **values}


def make(name: str, official: str, out_dir: str) -> str:
  if name.startswith('tf1_'):
    work = tempfile.mkdtemp()
    root = os.path.join(work, name)
    os.makedirs(os.path.join(root, 'tf1'))
    outputs = make_tf1(name, official, root)
    return _archive(name, SPECS[name], outputs, work, root, out_dir)
  depth, width, sk_ratio, num_proj_layers, selector = SPECS[name]
  tf, run, model, lars_optimizer = build(os.path.join(official, 'tf2'), depth, width, sk_ratio,
                                         num_proj_layers, selector)
  images = fashion_mnist('t10k', NUM_IMAGES)
  model(tf.constant(images), training=False)  # builds the variables
  set_weights(model.variables, lambda v, value: v.assign(tf.constant(value)),
              np.random.default_rng(sum(map(ord, name))))

  x = tf.constant(images)
  h = model.resnet_model(x, training=False)
  outputs = {'images': images, 'h': h.numpy()}
  hidden = h
  layers = model._projection_head.linear_layers  # pylint: disable=protected-access
  hiddens = [h]
  for j, layer in enumerate(layers):
    hidden = layer(hidden, training=False)
    if j != len(layers) - 1:
      hidden = tf.nn.relu(hidden)
    hiddens.append(hidden)
    outputs[f'head_{j + 1}'] = hidden.numpy()
  proj_out, selected = model._projection_head(h, False)  # pylint: disable=protected-access
  np.testing.assert_array_equal(proj_out.numpy(), outputs[f'head_{len(layers)}'])
  np.testing.assert_array_equal(selected.numpy(), hiddens[selector].numpy())
  _, logits = model(x, training=False)
  outputs['logits_sup'] = logits.numpy()

  work = tempfile.mkdtemp()
  root = os.path.join(work, name)
  os.makedirs(root)
  # What run.py checkpoints: the model, the step and the optimizer with its slots (created by
  # one update at learning rate 0, which leaves the weights as they are).
  optimizer = lars_optimizer.LARSOptimizer(0.0, momentum=0.9, weight_decay=1e-6)
  optimizer.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
  for v in optimizer.variables():
    if v.dtype == tf.float32 and v.shape.rank:
      v.assign(tf.zeros_like(v))
  checkpoint = tf.train.Checkpoint(model=model, global_step=tf.Variable(0, dtype=tf.int64),
                                   optimizer=optimizer)
  checkpoint.write(os.path.join(root, 'ckpt', 'ckpt'))
  tf.saved_model.save(run.build_saved_model(model), os.path.join(root, 'saved_model'))
  # The SavedModel's own outputs equal the Keras model's (to float32 round-off: a graph).
  loaded = tf.saved_model.load(os.path.join(root, 'saved_model'))
  saved = loaded(x, trainable=False)
  for key, ours in (('final_avg_pool', 'h'), ('logits_sup', 'logits_sup')):
    np.testing.assert_allclose(saved[key].numpy(), outputs[ours], rtol=1e-4,
                               atol=1e-4 * np.abs(outputs[ours]).max())
  return _archive(name, SPECS[name], outputs, work, root, out_dir)


def _archive(name, spec, outputs, work, root, out_dir) -> str:
  depth, width, sk_ratio, num_proj_layers, selector = spec
  np.savez(os.path.join(root, 'outputs.npz'), **outputs)
  with open(os.path.join(root, 'spec.json'), 'w') as f:
    json.dump(dict(depth=depth, width_multiplier=width, sk_ratio=sk_ratio,
                   num_proj_layers=num_proj_layers, ft_proj_selector=selector,
                   num_classes=NUM_CLASSES), f, indent=1)
  archive = os.path.join(out_dir, f'{name}.tar.xz')
  subprocess.run(['tar', '-C', work, '-cJf', archive, name], check=True,
                 env=dict(os.environ, XZ_OPT='-9e'))
  shutil.rmtree(work)
  return archive


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--official', required=True,
                      help='a checkout of github.com/google-research/simclr')
  parser.add_argument('--out', default=os.path.dirname(os.path.abspath(__file__)))
  parser.add_argument('--names', default=','.join(SPECS))
  args = parser.parse_args()
  for name in args.names.split(','):
    # One process per model: the official code reads its architecture from global flags
    # and Keras names layers per process.
    if len(args.names.split(',')) > 1:
      subprocess.run([sys.executable, __file__, f'--official={args.official}',
                      f'--out={args.out}', f'--names={name}'], check=True)
      continue
    archive = make(name, args.official, args.out)
    print(f'{archive}: {os.path.getsize(archive):,} bytes')


if __name__ == '__main__':
  main()
