"""Backbones and whole classifiers, by name: ``create_model`` and ``list_models``.

Importing this package registers every model.
"""

from attnscope.models import agcnn, densenet, resnet, vgg, vit  # noqa: F401  (importing registers the models)
from attnscope.models.base import AttnClassifier, ModelConfig
from attnscope.models.registry import (
    create_model,
    list_models,
    model_entry,
    model_summary,
    register_class,
    register_model,
)
from attnscope.models.weights import LoadReport, load_pretrained, read_state_dict

__all__ = [
    "AttnClassifier",
    "LoadReport",
    "ModelConfig",
    "create_model",
    "list_models",
    "load_pretrained",
    "model_entry",
    "model_summary",
    "read_state_dict",
    "register_class",
    "register_model",
]
