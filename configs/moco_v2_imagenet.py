"""MoCo v2 on ImageNet with the paper's defaults (ResNet-50, batch 256, 200 epochs).

Run (8 GPUs or a TPU slice; imagenet2012 prepared in TFDS's data_dir, see docs/data.md):
  python -m simclr_jax.main --config=configs/moco_v2_imagenet.py --workdir=gs://BUCKET/moco_v2 \
    --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets

Paper (Chen, Fan, Girshick, He 2020, "Improved Baselines with Momentum Contrastive Learning",
Table 1-2): SGD lr 0.03 x B/256, momentum 0.9, weight decay 1e-4, cosine schedule, 200 epochs at
batch 256, temperature 0.2, queue K = 65536, key-encoder momentum m = 0.999, 2-layer MLP head
(2048-d hidden, 128-d out), colour jitter (0.4, 0.4, 0.4, 0.1) + grayscale + blur, crops from
20-100% of the image: linear-eval top-1 67.5%.

MoCo v1 (He et al. 2020, 60.6% after 200 epochs) is this config with
  --config.model.head_mode=linear --config.loss.temperature=0.07 --config.augment.blur=False
(v1 also used a step schedule, x0.1 at epochs 120 and 160; here the schedule is always cosine).
Deviations from the official code are listed in docs/methods.md.
"""

from simclr_jax import defaults

imagenet = defaults.config_file(__file__, 'imagenet')



def get_config():
  c = imagenet.imagenet_data_and_eval(defaults.get_config())
  c.method = 'moco'
  c.augment.color_strength = 0.5  # SimCLR's jitter at strength s is (0.8s, 0.8s, 0.8s, 0.2s)
  c.augment.blur = True
  c.augment.crop_area_min = 0.2
  c.model.depth = 50
  c.model.width_multiplier = 1.0
  c.model.head_mode = 'nonlinear'
  c.model.head_num_layers = 2
  c.model.head_hidden_dim = -1  # = h's width, 2048
  c.model.head_out_dim = 128
  c.batch_size = 256
  c.num_epochs = 200
  c.loss.temperature = 0.2
  c.moco.queue_size = 65536
  c.moco.momentum = 0.999
  c.moco.symmetric = False
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.03
  c.optimizer.lr_scaling = 'linear'  # 0.03 * 256 / 256 = 0.03
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_epochs = 0.0
  c.checkpoint_every_steps = 5000
  c.log_every_steps = 100
  return c
