"""Timing: what a model costs to run, measured side by side on one machine.

:mod:`m2pt_deploy.bench.cuda` times vanilla, merged and unmerged ViTs on a GPU (``m2pt-bench
--device cuda``); :mod:`m2pt_deploy.bench.cuda_report` turns its timings into rows, ratios
and Markdown. The CPU benchmark still lives in :mod:`m2pt_deploy.verify.benchmark`.
Importing this package needs no GPU.
"""

from __future__ import annotations

__all__: list[str] = []
