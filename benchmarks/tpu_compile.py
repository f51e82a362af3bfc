"""Compiles the ImageNet steps for Cloud TPU slices on a CPU host, with no TPU (deviceless AOT).

libtpu (`pip install "libtpu==0.0.42.*"`, the version jax[tpu]==0.10.2 pins) describes a slice
(`jax.experimental.topologies.get_topology_desc`); the project's own mapped steps are lowered with
`jax.ShapeDtypeStruct`s sharded over a mesh of that slice's devices and compiled by the real TPU
compiler. The compiled program says what one core holds (`memory_analysis`) and does
(`cost_analysis`: FLOPs, bytes of HBM traffic) per step; from the chip's peak bf16 rate and HBM
bandwidth follows a roofline lower bound on the step time, the views/s per core it allows, and
the MFU ceiling (model FLOPs / (time x peak) at that bound).

  TPU_SKIP_MDS_QUERY=1 JAX_PLATFORMS=cpu python benchmarks/tpu_compile.py \\
      --topologies=v3-32,v4-32,v5e-256 --methods=simclr,moco,barlow_twins \\
      --steps=train,features,linear,finetune --dtypes=bfloat16 --out=/tmp/tpu_compile.json

Steps: `train` (the pretraining step of configs/<method>_imagenet, the paper's batch), and the
evaluation steps of the ImageNet configs: `features` (frozen forward pass, eval.batch_size),
`linear` (the SGD linear protocol's step, eval.linear_batch_size), `finetune` (fine-tuning with
BN over the global batch, eval.finetune_batch_size). One JSON line per compile on stdout and in
--out, then a table.
"""

import functools
import json
import os
import sys
import time

os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
# Compile-only: no chip is claimed, so several processes may load libtpu at once (a test beside
# a running benchmark).
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from configs import barlow_twins_imagenet  # pylint: disable=wrong-import-position
from configs import imagenet  # pylint: disable=wrong-import-position
from configs import moco_v2_imagenet  # pylint: disable=wrong-import-position
from simclr_jax import defaults  # pylint: disable=wrong-import-position
from simclr_jax import parallel  # pylint: disable=wrong-import-position
from simclr_jax import train  # pylint: disable=wrong-import-position
from simclr_jax import train_step as train_step_lib  # pylint: disable=wrong-import-position
from simclr_jax.evaluation import classifier  # pylint: disable=wrong-import-position
from simclr_jax.evaluation import features as features_lib  # pylint: disable=wrong-import-position
from simclr_jax.evaluation import protocols  # pylint: disable=wrong-import-position

GIB = 1 << 30
IMAGENET_TRAIN_EXAMPLES = 1_281_167
IMAGENET_CLASSES = 1000

# Per chip: peak dense bf16 FLOP/s, HBM bytes/s, HBM bytes, TensorCores; the libtpu topology
# name (and chip config). Source: Cloud TPU system architecture pages (cloud.google.com/tpu/docs/
# v3, /v4, /v5e): v3 123 TFLOP/s, 900 GB/s, 32 GiB over 2 cores; v4 275 TFLOP/s, 1228 GB/s,
# 32 GiB, 2 cores as one megacore device; v5e 197 TFLOP/s, 819 GB/s, 16 GiB, 1 core.
CHIPS = {
    'v3': dict(peak_flops=123e12, hbm_bandwidth=900e9, hbm_bytes=32 * GIB, cores=2),
    'v4': dict(peak_flops=275e12, hbm_bandwidth=1228e9, hbm_bytes=32 * GIB, cores=2),
    'v5e': dict(peak_flops=197e12, hbm_bandwidth=819e9, hbm_bytes=16 * GIB, cores=1),
}
# A slice's name (TensorCores for v3/v4, chips for v5e, as Cloud TPU names them) -> libtpu.
TOPOLOGIES = {
    'v3-8': ('v3', 'v3:2x2', {}),
    'v3-32': ('v3', 'v3:4x4', {}),
    'v4-32': ('v4', 'v4:2x2x4', {'chip_config_name': 'megacore'}),
    'v5e-256': ('v5e', 'v5e:16x16', {}),
}
CONFIGS = {'simclr': imagenet, 'moco': moco_v2_imagenet, 'barlow_twins': barlow_twins_imagenet}

def topology_devices(name: str):
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  chip, libtpu_name, kwargs = TOPOLOGIES[name]
  return chip, topologies.get_topology_desc(libtpu_name, 'tpu', **kwargs).devices


def method_config(method: str, dtype: str, overrides=()):
  config = CONFIGS[method].get_config()
  config.model.dtype = dtype
  for item in overrides:
    defaults.override(config, item)
  return config


def _abstract(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding),
                      tree)


def lower_train_step(config, mapper, batch_size: int):
  """The pretraining step (as `train.pretrain` maps it) lowered for `mapper`'s devices."""
  config.batch_size = batch_size
  s = train.build(config, mapper, num_train_examples=IMAGENET_TRAIN_EXAMPLES,
                  num_classes=IMAGENET_CLASSES, channels=3)
  state = jax.eval_shape(lambda: train_step_lib.create_train_state(
      s.model, s.method, s.tx, config, image_shape=s.image_shape))
  size = config.dataset.image_size
  batch = {'views': jax.ShapeDtypeStruct((batch_size, 2, size, size, 3), jnp.float32,
                                         sharding=mapper.batch_sharding),
           'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32,
                                         sharding=mapper.batch_sharding)}
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=mapper.replicated)
  step = train.make_step(s)
  return step.lower(_abstract(state, mapper.replicated), batch, rng)


def _classifier_parts(config, mapper):
  s = train.build(config, mapper, num_train_examples=IMAGENET_TRAIN_EXAMPLES,
                  num_classes=IMAGENET_CLASSES, channels=3)
  model = classifier.with_axis(s.model, None)
  variables = jax.eval_shape(lambda: train_step_lib.init_variables(
      model, image_shape=s.image_shape, seed=0))
  return model, variables, s.image_shape


def lower_features_step(config, mapper, batch_size: int):
  model, variables, shape = _classifier_parts(config, mapper)
  forward = features_lib._mapped_forward(model, mapper.mesh, 0)  # pylint: disable=protected-access
  images = jax.ShapeDtypeStruct((batch_size,) + shape, jnp.float32,
                                sharding=mapper.batch_sharding)
  return forward.lower(_abstract(variables, mapper.replicated), images)


def lower_classifier_step(config, mapper, batch_size: int, *, finetune: bool):
  """The step of the SGD linear protocol (frozen model) or of fine-tuning (all blocks train)."""
  import optax  # pylint: disable=g-import-not-at-top
  model, variables, shape = _classifier_parts(config, mapper)
  names = ('encoder',) if finetune else ()
  params = variables['params']
  dim = params['probe']['kernel'].shape[0]
  trainable = {'classifier': {'kernel': jax.ShapeDtypeStruct((dim, IMAGENET_CLASSES), jnp.float32),
                              'bias': jax.ShapeDtypeStruct((IMAGENET_CLASSES,), jnp.float32)},
               **{n: params[n] for n in names}}
  tx = optax.sgd(optax.cosine_decay_schedule(1.0, 1000), momentum=0.9, nesterov=True)
  state = classifier.ClassifierState(
      step=jax.ShapeDtypeStruct((), jnp.int32), trainable=trainable,
      frozen={n: v for n, v in params.items() if n not in names},
      batch_stats=variables['batch_stats'], opt_state=jax.eval_shape(tx.init, trainable))
  step = mapper.map_step(functools.partial(
      classifier.classifier_step, model=classifier.with_axis(model, parallel.AXIS), tx=tx,
      trainable_names=names, fine_tune_after_block=-1 if finetune else 4, head_layer=0,
      augment_fn=protocols.finetune_augment(shape[0])))
  batch = {'image': jax.ShapeDtypeStruct((batch_size,) + shape, jnp.float32,
                                         sharding=mapper.batch_sharding),
           'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32,
                                         sharding=mapper.batch_sharding)}
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=mapper.replicated)
  return step.lower(_abstract(state, mapper.replicated), batch, rng)


def compile_report(lowered, *, chip: str, num_devices: int, images_per_step: int,
                   views_per_image: int) -> dict:
  """Per-core memory and cost of a compiled step, and its roofline bound."""
  t0 = time.time()
  compiled = lowered.compile()
  compile_s = time.time() - t0
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  c = CHIPS[chip]
  per_core_flops = c['peak_flops'] / c['cores']
  per_core_bandwidth = c['hbm_bandwidth'] / c['cores']
  per_core_hbm = c['hbm_bytes'] / c['cores']
  # A v4 megacore device is one chip (two cores) with the chip's HBM; v3/v5e devices are cores.
  per_device = c['cores'] if chip == 'v4' else 1
  flops = float(cost.get('flops', 0.0))
  traffic = float(cost.get('bytes accessed', 0.0))
  bound_s = max(flops / (per_core_flops * per_device), traffic / (per_core_bandwidth * per_device))
  resident = (memory.argument_size_in_bytes + memory.output_size_in_bytes
              - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  views_per_device = images_per_step * views_per_image / num_devices
  return dict(
      compile_s=round(compile_s, 1),
      argument_gib=memory.argument_size_in_bytes / GIB,
      output_gib=memory.output_size_in_bytes / GIB,
      alias_gib=memory.alias_size_in_bytes / GIB,
      temp_gib=memory.temp_size_in_bytes / GIB,
      resident_gib=resident / GIB,
      hbm_gib=per_core_hbm * per_device / GIB,
      hbm_free=1 - resident / (per_core_hbm * per_device),
      tflop_per_device=flops / 1e12,
      hbm_traffic_gib_per_device=traffic / GIB,
      roofline_ms=bound_s * 1e3,
      bound='compute' if flops / per_core_flops > traffic / per_core_bandwidth else 'memory',
      views_per_s_per_core_bound=views_per_device / bound_s / per_device,
      # At the bound the step is pure compute or pure traffic; MFU cannot exceed this.
      mfu_bound=(flops / (per_core_flops * per_device)) / bound_s)


def run(topology: str, method: str, step: str, dtype: str, overrides=(),
        batch_per_core: int = 0) -> dict:
  chip, devices = topology_devices(topology)
  mapper = parallel.Mapper(devices=devices)
  n = mapper.num_devices
  config = method_config(method, dtype, overrides)
  batch = {'train': config.batch_size, 'features': config.eval.batch_size,
           'linear': config.eval.linear_batch_size,
           'finetune': config.eval.finetune_batch_size}[step]
  if batch_per_core > 0:
    batch = batch_per_core * n
  if step == 'train':
    lowered = lower_train_step(config, mapper, batch)
  elif step == 'features':
    lowered = lower_features_step(config, mapper, batch)
  else:
    lowered = lower_classifier_step(config, mapper, batch, finetune=step == 'finetune')
  report = compile_report(lowered, chip=chip, num_devices=n, images_per_step=batch,
                          views_per_image=2 if step == 'train' else 1)
  return dict(benchmark='tpu_compile', topology=topology, devices=n, method=method, step=step,
              dtype=dtype, global_batch=batch, image_size=config.dataset.image_size,
              model=f'ResNet-{config.model.depth} x{config.model.width_multiplier:g}',
              overrides=list(overrides), libtpu=_libtpu_version(), jax=jax.__version__,
              **report)


def _libtpu_version() -> str:
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version('libtpu')
  except Exception:  # pylint: disable=broad-except
    return 'unknown'


def table(rows) -> str:
  head = ('| slice | method | step | dtype | batch | resident GiB / HBM (free) | TFLOP | HBM GiB | '
          'roofline ms (bound) | views/s/core | MFU bound | compile s |')
  lines = [head, '|' + '---|' * 12]
  for r in rows:
    lines.append(
        f"| {r['topology']} | {r['method']} | {r['step']} | {r['dtype']} | {r['global_batch']} | "
        f"{r['resident_gib']:.2f} / {r['hbm_gib']:.0f} ({100 * r['hbm_free']:.0f} %) | "
        f"{r['tflop_per_device']:.2f} | {r['hbm_traffic_gib_per_device']:.1f} | "
        f"{r['roofline_ms']:.0f} ({r['bound']}) | {r['views_per_s_per_core_bound']:.0f} | "
        f"{100 * r['mfu_bound']:.0f} % | {r['compile_s']:.0f} |")
  return '\n'.join(lines)


def _define_flags():
  """The command's flags (defined only when run as a script: the test imports this module)."""
  flags.DEFINE_list('topologies', ['v3-32', 'v4-32', 'v5e-256'],
                    f'Slices, of {sorted(TOPOLOGIES)}.')
  flags.DEFINE_list('methods', ['simclr', 'moco', 'barlow_twins'], 'Methods.')
  flags.DEFINE_list('steps', ['train', 'features', 'linear', 'finetune'], 'Steps.')
  flags.DEFINE_list('dtypes', ['bfloat16'], 'Compute dtypes (model.dtype).')
  flags.DEFINE_integer('batch_per_core', 0,
                       "> 0: this many images per core instead of the config's batch.")
  flags.DEFINE_multi_string('override', [], 'config overrides, e.g. --override=model.depth=18.')
  flags.DEFINE_string('out', '', 'Append the JSON lines to this file.')


def main(argv):
  del argv
  f = flags.FLAGS
  rows = []
  for topology in f.topologies:
    for method in f.methods:
      for step in f.steps:
        if step != 'train' and method != f.methods[0]:
          continue  # the evaluation steps are the same for every method's encoder
        for dtype in f.dtypes:
          row = run(topology, method, step, dtype, f.override, f.batch_per_core)
          print(json.dumps(row), flush=True)
          if f.out:
            with open(f.out, 'a') as out:
              out.write(json.dumps(row) + '\n')
          rows.append(row)
  print(table(rows))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
