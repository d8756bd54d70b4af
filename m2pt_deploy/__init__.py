"""m2pt-deploy: merge, export, verify and serve Multimodal Pathway (M2PT) transformers.

The package reads as the pipeline: ``pathway`` (add pathways) → ``merge`` (fold them
away) → ``export`` (ONNX, TensorRT) → ``verify`` (prove equivalence and cost) →
``serving``. ``checkpoint``, ``vit`` and ``errors`` sit underneath; ``cli`` on top.
Importing the package never imports an optional backend.
"""

from __future__ import annotations

__version__ = "0.1.0"

from m2pt_deploy.errors import M2ptError

__all__ = ["M2ptError", "__version__"]
