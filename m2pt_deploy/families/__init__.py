"""Target model families and their registry: the bottom of the pipeline (everything above reads a
:class:`ModelSpec` and asks the registry for its family). Built in: ``vit`` (timm image ViTs, MAE,
AudioMAE), ``deit`` (timm's distilled DeiT), ``videomae`` (VideoMAE V2) and ``pointmae``
(Point-MAE); add yours with :func:`register_family`.

Every module of this package that is not one of its support modules below is a family, imported
here so that it registers itself: a new family is one new file. Importing them costs no torch
(see :mod:`~m2pt_deploy.families.base`), so the command line builds its flags from them at once.
"""

import importlib  # noqa: I001 (the families register in the order of the imports below)
import pkgutil

# The first three families register in the order messages have always listed them; the rest
# (deit, yours) follow, found below.
from m2pt_deploy.families.vit import ViTFamily
from m2pt_deploy.families.videomae import VideoMAEFamily
from m2pt_deploy.families.pointmae import PointMAEFamily
from m2pt_deploy.families.base import FamilyOption, ModelFamily, ModelSpec
from m2pt_deploy.families.registry import (
    detect_family,
    family_names,
    family_of,
    family_options,
    get_family,
    register_family,
    unregister_family,
)

__all__ = ["FamilyOption", "ModelFamily", "ModelSpec", "PointMAEFamily", "VideoMAEFamily", "ViTFamily",
           "detect_family", "family_names", "family_of", "family_options", "get_family", "register_family",
           "unregister_family"]

# What the families share, and the torch modules they build (imported only when a model is built).
_SUPPORT = frozenset({"audio", "base", "heads", "point_transformer", "registry", "training_args",
                      "video_transformer"})

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _SUPPORT and not _module.ispkg:
        importlib.import_module(f"{__name__}.{_module.name}")
