"""Model zoo. `create_model(name, num_classes=, in_channels=, width=)`; `list_models()`."""

from lowbit.models import resnet_cifar, small  # noqa: F401  (registers the models)
from lowbit.models.registry import create_model, list_models, register_model, scaled

__all__ = ["create_model", "list_models", "register_model", "scaled"]
