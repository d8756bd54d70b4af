"""Target model families and their registry (the bottom of the pipeline: everything above reads a
:class:`ModelSpec` and asks its family). Built in: ``vit`` (timm image ViTs, MAE, AudioMAE)
and ``pointmae`` (Point-MAE point-cloud classifiers)."""

from m2pt_deploy.families.base import FamilyOption, ModelFamily, ModelSpec
from m2pt_deploy.families.pointmae import PointMAEFamily
from m2pt_deploy.families.registry import detect_family, family_names, get_family, register_family
from m2pt_deploy.families.vit import ViTFamily

__all__ = ["FamilyOption", "ModelFamily", "ModelSpec", "PointMAEFamily", "ViTFamily", "detect_family",
           "family_names", "get_family", "register_family"]

register_family(ViTFamily())
register_family(PointMAEFamily())
