"""Self-supervised methods and the supervised baseline, selected by `config.method`."""

from simclr_jax.methods import barlow_twins
from simclr_jax.methods import base
from simclr_jax.methods import moco
from simclr_jax.methods import simclr
from simclr_jax.methods import supervised

_REGISTRY = {
    'simclr': simclr.SimCLR,
    'moco': moco.MoCo,
    'barlow_twins': barlow_twins.BarlowTwins,
    'supervised': supervised.Supervised,
}


def available() -> list[str]:
  return sorted(_REGISTRY)


def get_method(name: str) -> base.Method:
  if name not in _REGISTRY:
    raise ValueError(f'unknown method {name!r}; set config.method to one of {available()}')
  return _REGISTRY[name]()
