"""Stateless random draws for the tf.data augmentations: seeds, independent streams, uniforms,
coin flips. Every draw is a pure function of its seed (an int tensor of shape [2]), so an
augmentation gives the same numbers in eager mode, inside `tf.data.Dataset.map` and after a
resume.
"""

from typing import Callable

import tensorflow as tf


def as_seed(seed) -> tf.Tensor:
  """A stateless seed as an int64 tensor of shape [2] (one dtype, so eager == graph)."""
  return tf.cast(tf.convert_to_tensor(seed), tf.int64)


def fold_in(seed, data) -> tf.Tensor:
  """A new seed [2] from `seed` and an integer; distinct `data` give independent streams."""
  return tf.random.experimental.stateless_fold_in(as_seed(seed), tf.cast(data, tf.int64))


def uniform(seed, shape=(), minval=0., maxval=1.) -> tf.Tensor:
  """Uniform floats in [minval, maxval) of `shape`, a pure function of `seed`."""
  return tf.random.stateless_uniform(shape, as_seed(seed), minval=minval, maxval=maxval)


def bernoulli(seed, p: float) -> tf.Tensor:
  """A bool scalar that is True with probability p."""
  return uniform(fold_in(seed, 0)) < p


def apply_with_prob(seed, p: float, fn: Callable[[], tf.Tensor], image: tf.Tensor) -> tf.Tensor:
  """fn() with probability p, else `image` (the coin is `bernoulli(seed, p)`)."""
  return tf.cond(bernoulli(seed, p), fn, lambda: image)
