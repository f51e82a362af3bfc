"""Our SimCLR step beside PyTorch's on this CPU, timed interleaved in one run.

  python benchmarks/compare_cpu.py --batch_size=128 --rounds=5 \
    --variants=torch,jax:xla,jax:im2col,jax:im2col:devices=2

Each variant lives in its own worker process (JAX's simulated device count and XLA flags are
fixed at process start), is built and warmed up, then waits. The parent then times the variants
in turns, A, B, C, A, B, C, ..., so a load change on a shared machine hits every variant alike;
it reports medians, the ratio of every variant to the first 'torch' one, and the load average
at each round. Each turn runs `--steps_per_turn` steps back to back (default 3) and times all
but the first: the step right after another process ran is slower for reasons that training
never meets (CIFAR ResNet-18 at N=128 on a 2-core Xeon: JAX 4.4-4.9 s per step when every step
followed a PyTorch step, 3.6 s step after step in the same worker; PyTorch 3.4-3.7 vs 3.4 s).

Variant syntax: `torch[:threads=T][:format=contiguous]`, or
`jax:<conv_impl>[:devices=D][:flags=<extra XLA flags, ';' for spaces>]`, or `ceiling` (a
2048^3 float32 jitted matmul, the machine's matmul ceiling, timed in the same turns so it sees
the same load). FLOPs per step are XLA's cost analysis of the 'xla' step (the same math for
every variant), so ceiling_fraction compares like with like. Any torch or jax variant takes
`:preload=<shared library>`, its worker's LD_PRELOAD (e.g. tcmalloc, which launch/cpu_env.sh
preloads for CPU training: compare both sides with and without it).

Prints one table and one JSON line.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_CEILING_N = 2048


def _parse(spec: str) -> dict:
  parts = spec.split(':')
  out = {'kind': parts[0], 'spec': spec}
  if out['kind'] == 'jax':
    out['conv_impl'] = parts[1] if len(parts) > 1 else 'xla'
    rest = parts[2:]
  else:
    rest = parts[1:]
  for part in rest:
    key, value = part.split('=', 1)
    out[key] = value
  if out['kind'] not in ('jax', 'torch', 'ceiling'):
    raise ValueError(f'unknown variant {spec!r}')
  return out


def _worker(args) -> None:
  """Builds one variant, says READY with its info, then runs one step per line on stdin."""
  v = _parse(args.worker)
  info = {}
  if v['kind'] == 'torch':
    import torch_train_step  # pylint: disable=g-import-not-at-top
    step, _ = torch_train_step.build(
        batch_size=args.batch_size, image_size=args.image_size, channels=args.channels,
        width_multiplier=args.width_multiplier, head_out_dim=args.head_out_dim,
        channels_last=v.get('format', 'channels_last') == 'channels_last',
        threads=int(v.get('threads', 0)), cifar_stem=bool(args.cifar_stem))
    import torch  # pylint: disable=g-import-not-at-top
    info['threads'] = torch.get_num_threads()
    info['torch_version'] = torch.__version__
  elif v['kind'] == 'jax':
    sys.argv = sys.argv[:1]  # train_step.py's absl flags are not parsed here.
    import train_step as jax_bench  # pylint: disable=g-import-not-at-top
    step, info = jax_bench.build_step(
        depth=18, width_multiplier=args.width_multiplier, image_size=args.image_size,
        channels=args.channels, batch_size=args.batch_size, head_out_dim=args.head_out_dim,
        num_devices=int(v.get('devices', 1)), conv_impl=v['conv_impl'],
        cifar_stem=bool(args.cifar_stem))
  else:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    a = jnp.ones((_CEILING_N, _CEILING_N), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)

    def step():
      # Best of 3: the ceiling is what the machine can do under the current load.
      best = float('inf')
      for _ in range(3):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
      return best

    step()
  for _ in range(args.warmup_steps):
    step()
  import resource  # pylint: disable=g-import-not-at-top
  # After compilation and the warm-up steps: the step's peak memory has been reached.
  info['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print('READY ' + json.dumps(info), flush=True)
  for line in sys.stdin:
    if line.strip() != 'STEP':
      break
    t0 = time.perf_counter()
    out = step()
    elapsed = time.perf_counter() - t0
    if v['kind'] == 'ceiling':
      elapsed = out
    print(f'TIME {elapsed}', flush=True)


def _start(spec: str, args) -> subprocess.Popen:
  v = _parse(spec)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  flags = env.get('XLA_FLAGS', '')
  if v['kind'] == 'jax':
    flags += f" --xla_force_host_platform_device_count={int(v.get('devices', 1))}"
    flags += ' ' + v.get('flags', '').replace(';', ' ')
  env['XLA_FLAGS'] = flags.strip()
  if 'preload' in v:  # e.g. preload=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
    env['LD_PRELOAD'] = v['preload']
  env['PYTHONPATH'] = os.pathsep.join(
      [_HERE, os.path.dirname(_HERE), env.get('PYTHONPATH', '')]).strip(os.pathsep)
  cmd = [sys.executable, os.path.abspath(__file__), f'--worker={spec}']
  for k in ('batch_size', 'image_size', 'channels', 'width_multiplier', 'head_out_dim',
            'warmup_steps', 'cifar_stem'):
    cmd.append(f'--{k}={getattr(args, k)}')
  return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def _read(proc: subprocess.Popen, prefix: str) -> str:
  while True:
    line = proc.stdout.readline()
    if not line:
      raise RuntimeError(f'worker {proc.args[2]} exited (rc {proc.wait()}; -9: out of memory?)')
    if line.startswith(prefix):
      return line[len(prefix):].strip()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variants', default='torch,jax:xla')
  parser.add_argument('--batch_size', type=int, default=128, help='N images (2N views).')
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--channels', type=int, default=3)
  parser.add_argument('--width_multiplier', type=float, default=1.0)
  parser.add_argument('--head_out_dim', type=int, default=128)
  parser.add_argument('--cifar_stem', type=int, choices=(0, 1), default=1,
                      help='1: 3x3/1 stem conv (the issue-10 model); 0: 7x7/2 conv + max-pool '
                      '(configs/fashion_mnist_fast.py).')
  parser.add_argument('--rounds', type=int, default=5, help='Turns per variant (timed steps: rounds x '
                      '(steps_per_turn - 1), or rounds when steps_per_turn is 1).')
  parser.add_argument('--warmup_steps', type=int, default=1)
  parser.add_argument('--steps_per_turn', type=int, default=3,
                      help='Steps a variant runs back to back in each turn; with more than one, '
                      'the first of each turn (the switch-in step, after the other variants '
                      'ran) is reported apart and the rest are timed, as in training, where one '
                      'process runs step after step. 1: one timed step per turn.')
  parser.add_argument('--sequential_build', action='store_true',
                      help='Build workers one after the other (less memory at once).')
  parser.add_argument('--worker', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    _worker(args)
    return

  specs = args.variants.split(',')
  for spec in specs:
    _parse(spec)
  procs, infos = {}, {}
  times = {spec: [] for spec in specs}
  switch_in = {spec: [] for spec in specs}
  loads = []
  try:
    for spec in specs:
      procs[spec] = _start(spec, args)
      if args.sequential_build:
        infos[spec] = json.loads(_read(procs[spec], 'READY '))
    for spec in specs:
      if spec not in infos:
        infos[spec] = json.loads(_read(procs[spec], 'READY '))
    for _ in range(args.rounds):
      loads.append(os.getloadavg()[0])
      for spec in specs:
        for i in range(args.steps_per_turn):
          procs[spec].stdin.write('STEP\n')
          procs[spec].stdin.flush()
          t = float(_read(procs[spec], 'TIME '))
          (switch_in if i == 0 and args.steps_per_turn > 1 else times)[spec].append(t)
  finally:
    # Our own workers only: on an error, the others must not linger holding memory.
    for proc in procs.values():
      if proc.poll() is None:
        proc.stdin.close()
        try:
          proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
          proc.kill()

  flops = next((infos[s]['flops_per_step'] for s in specs
                if s.startswith('jax') and _parse(s)['conv_impl'] == 'xla'
                and infos[s].get('flops_per_step')), None)
  if flops is None:
    flops = next((infos[s]['flops_per_step'] for s in specs if infos[s].get('flops_per_step')),
                 None)
  ceiling = None
  if 'ceiling' in specs:
    ceiling = 2 * _CEILING_N ** 3 / float(np.median(times['ceiling']))
  torch_spec = next((s for s in specs if s.startswith('torch')), None)
  rows = []
  for spec in specs:
    if spec == 'ceiling':
      continue
    median = float(np.median(times[spec]))
    row = dict(variant=spec, images_per_s=2 * args.batch_size / median, step_s_median=median,
               step_s_min=float(np.min(times[spec])), step_s_max=float(np.max(times[spec])),
               step_s_all=times[spec], switch_in_step_s_all=switch_in[spec], **infos[spec])
    if flops:
      row['achieved_flops_per_s'] = flops / median
      if ceiling:
        row['ceiling_fraction'] = flops / median / ceiling
    rows.append(row)
  if torch_spec:
    torch_ips = next(r['images_per_s'] for r in rows if r['variant'] == torch_spec)
    for row in rows:
      row['ratio_vs_torch'] = row['images_per_s'] / torch_ips
  # Ratios per round too: within a round the variants ran back to back under similar load.
  if torch_spec:
    for row in rows:
      per_round = (np.median(np.reshape(times[torch_spec], (args.rounds, -1)), axis=1) /
                   np.median(np.reshape(times[row['variant']], (args.rounds, -1)), axis=1))
      row['ratio_vs_torch_per_round_median'] = float(np.median(per_round))

  print(f'batch_size N={args.batch_size} ({2 * args.batch_size} views), '
        f'{args.image_size}x{args.image_size}x{args.channels}, width {args.width_multiplier}, '
        f'{"CIFAR" if args.cifar_stem else "ImageNet"} stem, '
        f'{args.rounds} interleaved rounds of {args.steps_per_turn} step(s) per variant, '
        f'load avg per round {[round(x, 1) for x in loads]}')
  if ceiling:
    print(f'matmul ceiling (median of rounds) {ceiling / 1e9:.1f} GFLOP/s; '
          f'step FLOPs {flops / 1e9 if flops else float("nan"):.1f} G')
  print(f"{'variant':<40}{'views/s':>9}{'step s':>9}{'min':>8}{'max':>8}{'ceil%':>7}"
        f"{'x torch':>9}{'x/round':>9}")
  for r in rows:
    print(f"{r['variant']:<40}{r['images_per_s']:>9.2f}{r['step_s_median']:>9.2f}"
          f"{r['step_s_min']:>8.2f}{r['step_s_max']:>8.2f}"
          f"{100 * r.get('ceiling_fraction', float('nan')):>7.1f}"
          f"{r.get('ratio_vs_torch', float('nan')):>9.2f}"
          f"{r.get('ratio_vs_torch_per_round_median', float('nan')):>9.2f}")
  print(json.dumps(dict(batch_size=args.batch_size, image_size=args.image_size,
                        channels=args.channels, width_multiplier=args.width_multiplier,
                        cifar_stem=bool(args.cifar_stem),
                        rounds=args.rounds, steps_per_turn=args.steps_per_turn,
                        load_avg_per_round=loads,
                        matmul_ceiling_flops_per_s=ceiling, flops_per_step=flops,
                        date=time.strftime('%Y-%m-%d'), cpu_count=os.cpu_count(),
                        results=rows)))


if __name__ == '__main__':
  main()
