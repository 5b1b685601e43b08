"""Model zoo. `create_model(name, num_classes=, in_channels=, width=)`; `list_models()`."""

from lowbit.models import (  # noqa: F401  (registers the models)
    alexnet,
    mobilenet,
    resnet,
    resnet_cifar,
    small,
    vgg,
)
from lowbit.models.registry import (
    create_model,
    is_user_model,
    list_models,
    register_model,
    scaled,
    trust_model,
)

__all__ = ["create_model", "is_user_model", "list_models", "register_model", "scaled",
           "trust_model"]
