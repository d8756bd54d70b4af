"""Timing: what a model costs to run, measured side by side on one machine.

:mod:`m2pt_deploy.bench.cpu` times every runtime on the CPU (``m2pt-bench``) for the model a
:mod:`~m2pt_deploy.bench.subject` names (random weights, a checkpoint or an ONNX file), with
:mod:`~m2pt_deploy.bench.accuracy` scoring each format; :mod:`~m2pt_deploy.bench.cpu_report`,
:mod:`~m2pt_deploy.bench.goals` and :mod:`~m2pt_deploy.bench.chart` turn its dict into
Markdown, the goal table and a PNG. :mod:`m2pt_deploy.bench.cuda` times vanilla, merged and
unmerged ViTs on a GPU (``m2pt-bench --device cuda``); :mod:`m2pt_deploy.bench.cuda_report`
turns its timings into rows, ratios and Markdown. Importing this package needs no GPU.
"""

from __future__ import annotations

__all__: list[str] = []
