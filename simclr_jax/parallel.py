"""The one place where the per-core step is mapped over devices.

The per-core step is written once (`simclr_jax.train_step`) with every collective naming the axis
`'batch'`. `Mapper` maps it with `jax.shard_map` over a 1-D mesh of every device of every process
(JAX's current form of pmap: the same per-core program and collectives, one jit-compiled SPMD
program), and moves state and batches to the devices.

Multi-host: every process builds the same global mesh; a host batch is this process's slice of the
global batch and `put_batch` assembles the global array with
`jax.make_array_from_process_local_data`.
"""

import os
from typing import Any, Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

AXIS = 'batch'
PyTree = Any


def maybe_initialize_distributed(coordinator_address: Optional[str] = None,
                                 num_processes: Optional[int] = None,
                                 process_id: Optional[int] = None) -> None:
  """Starts JAX's distributed runtime when running on several hosts.

  On Cloud TPU pods JAX finds everything itself (`jax.distributed.initialize()` with no
  arguments). Elsewhere (SLURM, GPU clusters, local multi-process tests) pass the coordinator
  address, process count and id, or set JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID. With none of these and not on a TPU pod, this does nothing.
  """
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if num_processes is None and os.environ.get('JAX_NUM_PROCESSES'):
    num_processes = int(os.environ['JAX_NUM_PROCESSES'])
  if process_id is None and os.environ.get('JAX_PROCESS_ID'):
    process_id = int(os.environ['JAX_PROCESS_ID'])
  on_tpu_pod = bool(os.environ.get('TPU_WORKER_HOSTNAMES', '').count(','))
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif on_tpu_pod:
    jax.distributed.initialize()
  else:
    return
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


class Mapper:
  """Maps a per-core step over devices and places its inputs.

  Args:
    num_devices: how many devices to use (-1: all, across all processes). On several processes
      only -1 is allowed, since every process must contribute the same number of devices.
    devices: these devices instead (e.g. the compile-only devices of a TPU topology, for an
      ahead-of-time compile: benchmarks/tpu_compile.py).
  """

  def __init__(self, num_devices: int = -1, devices: Optional[list] = None):
    if devices is not None:  # e.g. a TPU topology's devices, to compile for it ahead of time
      self.devices = list(devices)
      self._make_mesh()
      return
    devices = jax.devices()
    if num_devices > 0:
      if jax.process_count() > 1 and num_devices != len(devices):
        raise ValueError('config.num_devices must be -1 on several processes')
      if num_devices > len(devices):
        raise ValueError(f'config.num_devices={num_devices} but only {len(devices)} devices '
                         'exist. On CPU, simulate more with '
                         'XLA_FLAGS=--xla_force_host_platform_device_count=N.')
      devices = devices[:num_devices]
    self.devices = devices
    self._make_mesh()

  def _make_mesh(self) -> None:
    self.mesh = jax.sharding.Mesh(np.asarray(self.devices), (AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P(AXIS))

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  def check_batch_size(self, global_batch_size: int) -> None:
    if global_batch_size % self.num_devices:
      raise ValueError(
          f'batch_size={global_batch_size} does not divide over {self.num_devices} devices; '
          f'set --config.batch_size to a multiple of {self.num_devices}.')

  def map_step(self, step_fn: Callable, *, donate_state: bool = True) -> Callable:
    """Maps `step_fn(state, batch, rng) -> (state, metrics)` over the devices.

    The returned function takes state from `put_state`, a batch from `put_batch` and a raw key
    (uint32 [2]); metrics come back as replicated scalars.
    """
    donate = (0,) if donate_state else ()
    # check_vma=False: the gradient of a per-core loss is per-core (no implicit psum over the
    # replicated parameters), and the step's explicit pmean makes it global, as in pmap.
    mapped = jax.shard_map(step_fn, mesh=self.mesh, in_specs=(P(), P(AXIS), P()),
                           out_specs=(P(), P()), check_vma=False)
    return jax.jit(mapped, donate_argnums=donate)

  def put_state(self, state: PyTree) -> PyTree:
    """Host (or device) state -> replicated over the mesh, as the mapped step takes it."""
    return jax.device_put(state, self.replicated)

  def get_state(self, state: PyTree) -> PyTree:
    """Mapped-step state -> host numpy arrays."""
    return jax.device_get(state)

  def put_batch(self, host_batch: PyTree) -> PyTree:
    """This process's slice of the global batch -> the global array, sharded on the batch axis."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), host_batch)
