"""The SimCLR paper's linear evaluation protocol (Appendix B.6), for splits of any size.

Frozen encoder with BN in inference mode, a linear layer on h trained with Nesterov momentum SGD
and cosine decay, no weight decay, on randomly cropped and flipped images for a number of epochs,
data-parallel on the shared training loop (`classifier.train_classifier`). Slower than the L-BFGS
probe of `evaluation/linear.py` (the encoder runs on every augmented batch); it is the protocol
for streamed datasets (ImageNet), whose features are never held in memory.
"""

from collections.abc import Callable, Mapping
import math
from typing import Any

import flax.linen as nn
import jax

from simclr_jax.evaluation import classifier as classifier_lib
from simclr_jax.evaluation import features as features_lib
from simclr_jax.evaluation import finetune as finetune_lib


def linear_eval_official(
    model: nn.Module,
    variables: Mapping[str, Any],
    train,
    test,
    *,
    num_classes: int,
    epochs: float = 90,
    batch_size: int = 4096,
    learning_rate: float | None = None,
    momentum: float = 0.9,
    feature: str = 'h',
    seed: int = 0,
    augment_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = finetune_lib.crop_and_flip,
    eval_batch_size: int = 512,
    **loop_kwargs,
) -> dict[str, Any]:
  """The SimCLR paper's linear evaluation protocol, data-parallel, for splits of any size.

  The whole model is frozen and runs in inference mode (running BN statistics, no parameter or
  statistic changes); a zero-bias, N(0, 0.01^2)-initialised linear layer on `feature` is trained
  with Nesterov momentum SGD, cosine-decayed learning rate, no weight decay, on a fresh random
  crop + horizontal flip of every training image at every step (the encoder runs on each
  augmented batch, so nothing is precomputed and a streamed split is never held in memory).
  Test accuracy uses the un-augmented test images. Paper (ImageNet, Appendix B.6; the official
  code's `--train_mode=finetune --fine_tune_after_block=4`): batch 4096, 90 epochs, learning rate
  0.1 * batch_size / 256. It runs on the shared loop (`classifier.train_classifier`): with a
  `workdir` it is checkpointed and resumes after a SIGTERM.

  Args:
    model: a `ContrastiveModel`.
    variables: its `{'params', 'batch_stats'}`; only read.
    train: an `evaluation.data.EvalSplit` (in memory or streamed).
    test: an `EvalSplit`.
    num_classes: number of classes C.
    epochs: passes over the training set (may be fractional); steps = ceil(epochs * N / batch).
    batch_size: global training batch.
    learning_rate: peak rate; None = 0.1 * batch_size / 256 as in the paper.
    momentum: Nesterov momentum.
    feature: `'h'` or `'head_<i>'`; the paper uses h.
    seed: drives the batch order, augmentation and classifier init.
    augment_fn: `(rng, images [B,H,W,C]) -> images`; None trains on the plain images.
    eval_batch_size: batch size of the test-set forward pass.
    loop_kwargs: `classifier.train_classifier`'s options (mapper, workdir, log_every_steps,
      checkpoint_every_steps, name).

  Returns:
    `dict(top1=, top5=, classifier={'kernel': [D, C], 'bias': [C]}, steps=, preempted=)`.
  """
  if learning_rate is None:
    learning_rate = 0.1 * batch_size / 256
  steps = max(1, math.ceil(epochs * train.num_examples / batch_size))
  result = classifier_lib.train_classifier(
      model, variables, train, test, num_classes=num_classes, fine_tune_after_block=4,
      head_layer=features_lib.parse_feature(feature), train_head=False, steps=steps,
      batch_size=batch_size, learning_rate=learning_rate, momentum=momentum, seed=seed,
      augment_fn=augment_fn, eval_batch_size=eval_batch_size, **loop_kwargs)
  return dict(top1=result['top1'], top5=result['top5'], classifier=result['classifier'],
              steps=steps, preempted=result['preempted'])
