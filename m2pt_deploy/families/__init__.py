"""Target model families and their registry: the bottom of the pipeline (everything above reads a
:class:`ModelSpec` and asks its family). Built in: ``vit`` (timm image ViTs, MAE, AudioMAE),
``videomae`` (VideoMAE V2) and ``pointmae`` (Point-MAE); add yours with :func:`register_family`."""

from m2pt_deploy.families.base import FamilyOption, ModelFamily, ModelSpec
from m2pt_deploy.families.pointmae import PointMAEFamily
from m2pt_deploy.families.registry import (
    detect_family,
    family_names,
    get_family,
    register_family,
    unregister_family,
)
from m2pt_deploy.families.videomae import VideoMAEFamily
from m2pt_deploy.families.vit import ViTFamily

__all__ = ["FamilyOption", "ModelFamily", "ModelSpec", "PointMAEFamily", "VideoMAEFamily", "ViTFamily",
           "detect_family", "family_names", "get_family", "register_family", "unregister_family"]

register_family(ViTFamily())
register_family(VideoMAEFamily())
register_family(PointMAEFamily())
