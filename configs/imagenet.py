"""SimCLR on ImageNet with the paper's defaults (ResNet-50 1x, batch 4096, 100 epochs).

Run (TPU pod; imagenet2012 must be prepared in TFDS's data_dir, see docs/data.md):
  python -m simclr_jax.main --config=configs/imagenet.py --workdir=gs://BUCKET/simclr_in \
    --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets

Paper (Chen et al. 2020, Table 6 / B.6): LARS, lr 0.3 x B/256 = 4.8, weight decay 1e-6,
temperature 0.1, 10 warmup epochs then cosine, 2-layer head to 128-d, colour strength 1.0 with
blur, global BN: linear-eval top-1 64.5% after 100 epochs at batch 4096 (69.3% after 1000).
"""

from simclr_jax import defaults


def imagenet_data_and_eval(c):
  """ImageNet as every ImageNet config reads and evaluates it (SimCLR, MoCo v2, Barlow Twins).

  After pretraining: the paper's linear evaluation (Appendix B.6: 90 epochs of crops + flips at
  batch 4096, Nesterov SGD at 0.1 x B/256, no weight decay), the kNN monitor, and fine-tuning on
  the paper's 1 % and 10 % label subsets (Appendix B.5: batch 4096, 0.05 x B/256, 60 / 30 epochs),
  all data-parallel on the streamed splits (docs/evaluation.md).
  """
  c.dataset.name = 'imagenet2012'
  c.dataset.image_size = 224
  c.augment.preset = 'imagenet'
  c.model.dtype = 'auto'  # bfloat16 compute on TPU / GPU, float32 on a CPU
  c.eval.batch_size = 1024
  c.eval.protocols = ('linear', 'knn', 'finetune')
  c.eval.linear_epochs = 90.0
  c.eval.linear_batch_size = 4096  # learning rate 0.1 * 4096 / 256 = 1.6 (linear_learning_rate -1)
  c.eval.finetune_fractions = (0.01, 0.1)
  c.eval.finetune_epochs = (60, 30)
  c.eval.finetune_batch_size = 4096
  c.eval.finetune_learning_rate = 0.05 * c.eval.finetune_batch_size / 256  # 0.8
  return c


def get_config():
  c = imagenet_data_and_eval(defaults.get_config())
  c.augment.crop_sampler = 'tf_bounding_box'  # the official code's crop (docs/parity.md)
  c.augment.color_strength = 1.0
  c.augment.blur = True
  c.model.depth = 50
  c.model.width_multiplier = 1.0
  # The official ResNet's layout (docs/parity.md): TensorFlow's SAME max-pool in the stem, a
  # projection shortcut in every stage's first block. Converted official checkpoints
  # (simclr_jax/convert.py) have the same architecture. SimCLRv2: --config.model.sk_ratio=0.0625
  # --config.model.head_num_layers=3.
  c.model.stage_projection = 'always'
  c.model.max_pool_padding = 'same'
  c.model.head_mode = 'nonlinear'
  c.model.head_num_layers = 2
  c.model.head_out_dim = 128
  c.batch_size = 4096
  c.num_epochs = 100
  c.loss.temperature = 0.1
  c.optimizer.name = 'lars'
  c.optimizer.learning_rate = 0.3
  c.optimizer.lr_scaling = 'linear'  # 0.3 * 4096 / 256 = 4.8
  c.optimizer.weight_decay = 1e-6
  c.optimizer.warmup_epochs = 10
  c.checkpoint_every_steps = 5000
  c.log_every_steps = 100
  return c
