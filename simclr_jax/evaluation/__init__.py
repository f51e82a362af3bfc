"""Offline evaluation protocols for a pretrained ContrastiveModel (docs/evaluation.md).

Pure library functions (arrays and arguments in, numbers and fitted weights out), one protocol per
module; import the module, e.g. `from simclr_jax.evaluation import linear`:
- `features`: `extract_features` (frozen model, inference mode), `topk_accuracy`.
- `linear`: `linear_eval` / `pixel_baseline` (L-BFGS, exact).
- `linear_sgd`: `linear_eval_official` (the paper's SGD protocol, any split size).
- `knn`: `knn_classify`, `knn_eval` (cosine similarity, exp(sim / T)-weighted votes).
- `subsets`: `label_fraction_indices` (class-balanced 1% / 10% label subsets).
- `finetune`: `finetune` (SimCLR / SimCLRv2 fine-tuning), `crop_and_flip`.
- `plots`: `embed_plot` (t-SNE PNG).

Functions are deliberately not re-exported here: `finetune.finetune` would shadow the
`finetune` module as a package attribute.
"""
