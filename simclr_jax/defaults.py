"""Every config field simclr_jax knows, with its default; the config files override these.

The files users run live in the repository's `configs/` (configs/fashion_mnist.py,
configs/cifar10.py, configs/imagenet.py, ...): each defines `get_config()` starting from
`defaults.get_config()`, or from another config file through `config_file`, so a config file works
from any working directory once the package is installed.
"""

import ast
import importlib.util
import os
import types

import ml_collections


class ConfigError(ValueError):
  """A config field has a value simclr_jax cannot run with."""


def config_file(anchor: str, name: str) -> types.ModuleType:
  """The config file `name`.py beside the file `anchor` (a config file's `__file__`), imported.

  For config files that build on another: `config_file(__file__, 'fashion_mnist').get_config()`.
  """
  path = os.path.join(os.path.dirname(os.path.abspath(anchor)), f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'simclr_jax_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def override(config: ml_collections.ConfigDict, assignment: str) -> None:
  """Sets `config.<a.b.c>` from 'a.b.c=value' (a benchmark's --override flag); the value is a
  Python literal (0.25, False, (0.01,), 'sgd') or else a bare string."""
  name, _, value = assignment.partition('=')
  node = config
  *path, leaf = name.split('.')
  for part in path:
    node = node[part]
  try:
    node[leaf] = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    node[leaf] = value


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = 'simclr'  # simclr | moco | barlow_twins | supervised (the baseline: labels, no SSL)
  c.seed = 0
  c.batch_size = 256  # global, in images (each gives 2 views)
  c.num_epochs = 100
  c.num_train_steps = -1  # > 0 wins over num_epochs
  # > 0: train for this many minutes of wall clock instead, the warmup + cosine schedule of the
  # num_train_steps / num_epochs run spread over them (simclr_jax/time_budget.py).
  c.time_budget_minutes = 0.0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.num_devices = -1  # -1: all local devices of every process
  c.init = 'pretrained'  # pretrained | random: the encoder that evaluation protocols use
  c.init_checkpoint = ''  # a workdir (or checkpoint dir) to take the encoder from for eval modes
  # Added to XLA_FLAGS before JAX starts (simclr_jax/xla_setup.py; the user's own XLA_FLAGS win).
  # CPU only: convolutions on XLA's Eigen kernels, not YNNPACK (1.7x a CIFAR ResNet-18 step on 2
  # cores, docs/benchmarks.md). '' leaves XLA's defaults.
  c.xla_flags = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'fashion_mnist'  # a TFDS name, or 'image_folder'
  c.dataset.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data_dir / IDX dir
  c.dataset.folder = ''  # image_folder: root with one subfolder per class
  c.dataset.image_size = 28  # side of the views fed to the model
  c.dataset.train_split = 'train'
  c.dataset.eval_split = 'test'
  c.dataset.download = True  # let TFDS download when no local copy is found
  c.dataset.strict = False  # image_folder: stop on an unreadable file instead of skipping it
  # True: grayscale in-memory images (Fashion-MNIST, MNIST, digits) as three equal channels,
  # for RGB models such as an imported official checkpoint (simclr_jax/convert.py).
  c.dataset.rgb = False
  c.dataset.max_train_examples = -1  # > 0: use only the first n training images (tests, studies)
  # Streamed datasets (ImageNet) are read in this many fixed shards of the split; a global batch
  # takes batch_size / stream_shards records of each, and each process reads its block of
  # shards, so the batches are the same on any number of processes. Divides every global batch;
  # the process count divides it (64 serves up to 64 hosts).
  c.dataset.stream_shards = 64

  c.augment = ml_collections.ConfigDict()
  c.augment.preset = 'fashion_mnist'  # imagenet | cifar | fashion_mnist | none
  c.augment.color_strength = 0.5
  c.augment.blur = False
  c.augment.crop_area_min = 0.08
  c.augment.crop_area_max = 1.0
  # How crop windows are drawn: inception (area-uniform, log-uniform aspect: torchvision's
  # RandomResizedCrop, which MoCo and Barlow Twins use) | tf_bounding_box (TF's
  # sample_distorted_bounding_box as the official SimCLR code calls it: smaller crops, median
  # area 0.39 against 0.48; docs/parity.md).
  c.augment.crop_sampler = 'inception'
  c.augment.ops = ()  # optional ordered op names (studies); empty = the preset's composition
  c.augment.ops_view2 = ()  # ops for the second view only; empty = same as ops
  # True: tf.data only gathers uint8 images and the train step draws both views (the same
  # distributions, far less host CPU; in-memory sources and crop / flip / brightness-contrast /
  # grayscale only: simclr_jax/data/device_augment.py, docs/data.md).
  c.augment.on_device = False

  c.model = ml_collections.ConfigDict()
  c.model.depth = 50
  c.model.width_multiplier = 1.0
  c.model.cifar_stem = ml_collections.FieldReference(None, field_type=bool)  # None: H <= 32
  c.model.stem_max_pool = True  # False: the ImageNet stem without its max-pool (stage 1 at H / 2)
  # SimCLRv2's selective-kernel ResNets: 0.0625 in the released models (ResNet-D stem and
  # shortcuts; selective-kernel 3x3 convs in bottleneck blocks). 0: plain ResNet.
  c.model.sk_ratio = 0.0
  # 'always': a projection shortcut in the first block of every stage, as the official code
  # (ResNet-18/34 gain a 1x1 conv in stage 1); 'needed': only where the shape changes.
  c.model.stage_projection = 'needed'
  # 'same': TensorFlow's SAME max-pool in the ImageNet stem, as the official code; 'symmetric':
  # one pixel on each side, as torchvision (docs/parity.md).
  c.model.max_pool_padding = 'symmetric'
  # Compute dtype: float32 | bfloat16 | auto (bfloat16 on TPU/GPU, float32 on CPU). Parameters,
  # optimizer state, BN statistics and the losses (NT-Xent / MoCo softmax, Barlow Twins
  # correlation) stay float32.
  c.model.dtype = 'float32'
  c.model.bn_momentum = 0.9
  c.model.bn_epsilon = 1e-5
  c.model.head_mode = 'nonlinear'  # none | linear | nonlinear
  c.model.head_num_layers = 2  # 2: SimCLR, 3: SimCLRv2
  c.model.head_out_dim = 128
  c.model.head_hidden_dim = -1  # width of the hidden head layers; -1: the input width (h's)
  # What the online linear probe reads: 0 = h, i = projection layer i (an imported SimCLRv2
  # fine-tuned model's classifier reads layer 1; simclr_jax/convert.py).
  c.model.probe_input = 0

  c.loss = ml_collections.ConfigDict()
  c.loss.name = 'nt_xent'
  c.loss.temperature = 0.1

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'lars'  # lars | sgd | adamw
  c.optimizer.learning_rate = 0.3  # base rate, scaled by lr_scaling
  c.optimizer.lr_scaling = 'linear'  # linear: base * B / 256 | sqrt: base * sqrt(B) | none
  c.optimizer.weight_decay = 1e-6
  c.optimizer.momentum = 0.9
  c.optimizer.trust_coefficient = 0.001
  c.optimizer.warmup_epochs = 10.0
  c.optimizer.probe_learning_rate = 0.1  # online linear probe (momentum SGD, no scaling)
  c.optimizer.bias_learning_rate_scale = 1.0  # lr of biases & BN / lr (Barlow Twins: 0.0048/0.2)

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 512  # feature extraction batch
  # Fast linear eval (L-BFGS) weight decay when l2_reg_grid is empty; -1: 1 / N for N labelled
  # examples, scikit-learn's default C=1 (stronger with fewer labels).
  c.eval.l2_reg = 1e-4
  # Fast linear eval: when set, the weight decay is picked from this grid by l2_reg_folds-fold
  # cross-validation on the labelled training examples (the test set takes no part), costing
  # len(grid) * folds extra fits per probe. A fixed 1e-4 under-regularises 600 labels
  # (docs/evaluation.md). E.g. --config.eval.l2_reg_grid='(1e-4,1e-3,3e-3,1e-2,3e-2,0.1,0.3)'.
  c.eval.l2_reg_grid = ()
  c.eval.l2_reg_folds = 5
  c.eval.max_iters = 500
  c.eval.feature = 'h'  # h, or head_<i> for the i-th projection-head layer
  c.eval.knn_k = (20, 200)
  c.eval.knn_temperature = 0.07
  c.eval.label_fractions = (0.01, 0.1, 1.0)
  # Label subsets per fraction < 1 for the linear probe; the mean is reported (subset-to-subset
  # spread at 1% of Fashion-MNIST: ~0.5 points std, docs/evaluation.md).
  c.eval.label_subsets = 5
  # Fine-tuning label fractions: class-balanced draws (seed config.seed); on streamed
  # imagenet2012 the paper's own 1 % / 10 % subsets (TFDS imagenet2012_subset).
  c.eval.finetune_fractions = (0.1,)
  c.eval.finetune_steps = 500
  c.eval.finetune_epochs = ()  # one per fraction; when set, wins over finetune_steps
  c.eval.finetune_batch_size = 128
  c.eval.finetune_learning_rate = 0.05
  c.eval.fine_tune_after_block = -1
  c.eval.finetune_head_layer = 0  # 0: from h; 1: from the first projection layer (SimCLRv2)
  c.eval.transfer_dataset = ''  # name of the target dataset for --mode=transfer
  c.eval.pixel_baseline = True  # logistic regression on raw pixels, reported beside linear eval
  # What --mode=pretrain_then_eval (and --mode=evaluate) run, in order: linear | linear_sgd | knn
  # | finetune | label_fraction_linear | embed_plot | transfer | probe | distill
  # (simclr_jax/evaluation/protocols.py).
  # 'linear' is the exact L-BFGS probe for in-memory data and the paper's SGD protocol for
  # streamed data.
  c.eval.protocols = ('linear',)
  # The paper's SGD linear evaluation (Appendix B.6): epochs, global batch, peak learning rate
  # (-1: 0.1 * batch / 256), Nesterov momentum, cosine decay, crop + flip.
  c.eval.linear_epochs = 90.0
  c.eval.linear_batch_size = 4096
  c.eval.linear_learning_rate = -1.0
  c.eval.linear_augment = 'crop_flip'  # crop_flip (the paper's) | flip | none

  # MoCo (He et al. 2020; v2: Chen et al. 2020), used when method == 'moco'. The temperature is
  # config.loss.temperature (0.07 v1, 0.2 v2).
  c.moco = ml_collections.ConfigDict()
  c.moco.queue_size = 65536  # K keys in the dictionary; a multiple of batch_size
  c.moco.momentum = 0.999  # m of the key encoder: key = m * key + (1 - m) * query
  c.moco.symmetric = False  # both views as queries (loss averaged); keys of view 2 enqueued

  # Barlow Twins (Zbontar et al. 2021), used when method == 'barlow_twins'. The projector is
  # config.model.head_* (paper: 3 layers of 8192).
  c.barlow_twins = ml_collections.ConfigDict()
  c.barlow_twins.lambd = 0.0051  # weight of the off-diagonal (redundancy reduction) term

  # SimCLR's loss study (Chen et al. 2020, section 5.1, Tables 2, 4, 5); config.loss.name picks
  # nt_xent | nt_logistic | margin_triplet (simclr_jax/methods/losses.py).
  c.loss.normalize = True  # l2-normalise z (cosine similarity); False: raw dot products
  c.loss.margin = 0.4  # margin_triplet: m in max(s_neg - s_pos + m, 0); paper tunes 0..1.6
  c.loss.negative_mining = 'none'  # nt_logistic, margin_triplet: none | semi_hard

  # How the encoder's convolutions are lowered (simclr_jax/models/conv.py): xla (nn.Conv; TPU,
  # GPU) | im2col (one matmul per conv; same parameters, for CPUs) | auto (xla off the CPU; on
  # the CPU per layer, conv.cpu_impl: native for stride-1 convs that fit the map and have >= 8
  # input channels, im2col for the others). Same parameters and math in all three.
  c.model.conv_impl = 'auto'

  # SimCLRv2's distillation (--mode=distill, evaluation/protocols.py): per fine-tuning fraction,
  # a student learns the fine-tuned teacher's predictions on every training image.
  c.distill = ml_collections.ConfigDict()
  c.distill.temperature = 1.0  # the paper's
  c.distill.label_weight = 0.0  # alpha: weight of the labelled loss (0: distillation alone)
  c.distill.epochs = 10.0  # over all training images
  c.distill.batch_size = 256
  c.distill.learning_rate = 0.1  # peak; Nesterov momentum SGD, cosine decay (as fine-tuning)
  c.distill.student_init = 'random'  # random | teacher (self-distillation from its weights)
  c.distill.student_depth = -1  # -1: the teacher's (self-distillation); e.g. 18 (big-to-small)
  c.distill.student_width_multiplier = -1.0  # -1: the teacher's
  return c
