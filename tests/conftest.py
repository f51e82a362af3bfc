"""Test-wide setup: 8 simulated CPU devices, the trainer's XLA flags, quiet TensorFlow, TF kept off
accelerators."""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import base  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import xla_setup  # pylint: disable=g-import-not-at-top,wrong-import-position

# What `python -m simclr_jax.main` runs with, so the tests exercise the shipped numerics.
xla_setup.apply_xla_flags(base.get_config().xla_flags)
jax.config.update('jax_num_cpu_devices', 8)
