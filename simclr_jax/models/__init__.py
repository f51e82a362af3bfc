"""Models: the ResNet encoder, the projection head and the model that joins them."""

from simclr_jax.models.heads import build_model, ContrastiveModel, ProjectionHead
from simclr_jax.models.resnet import ResNet

__all__ = ('ResNet', 'ProjectionHead', 'ContrastiveModel', 'build_model')
