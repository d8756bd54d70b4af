"""Activation ranges for int8 calibration, streamed: memory and time stay flat in the image count.

ONNX Runtime's percentile calibrator either keeps every activation of every calibration
batch before building its histograms (ViT-B/16 with 256 images: over 24 GB) or, fed one
batch at a time, re-bins each new batch against an ever-growing list of bin edges (the
slow, non-uniform ``np.histogram`` path: 11 minutes on 2 cores). Here each tensor keeps a
fixed number of uniform bins over ``[0, top]``; when a batch exceeds ``top``, the range
doubles and pairs of bins merge, as TensorRT's histogram calibrator does. The threshold
is the same percentile of ``|x|`` ONNX Runtime computes; the quantizer then takes the
ranges through its documented ``TensorQuantOverrides`` (``rmin`` / ``rmax``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx

from m2pt_deploy.runtime.sessions import ort_session

__all__ = ["AbsHistogram", "activation_ranges"]

_BINS = 2048
# ONNX Runtime's default for its percentile method, and what this project used before.
PERCENTILE = 99.999


class AbsHistogram:
    """A streaming histogram of ``|x|`` with ``bins`` uniform bins over ``[0, top]``."""

    def __init__(self, bins: int = _BINS) -> None:
        self.bins = bins
        self.counts = np.zeros(bins, np.int64)
        self.top = 0.0

    def add(self, x: np.ndarray) -> None:
        a = np.abs(x.reshape(-1).astype(np.float32, copy=False))
        largest = float(a.max()) if a.size else 0.0
        if self.top == 0.0:
            self.top = largest or 1e-12
        while largest > self.top:
            # Double the range: bin pairs merge into the lower half, the upper half starts empty.
            self.counts = np.concatenate([self.counts.reshape(-1, 2).sum(axis=1), np.zeros(self.bins // 2, np.int64)])
            self.top *= 2.0
        self.counts += np.histogram(a, bins=self.bins, range=(0.0, self.top))[0]

    def percentile(self, q: float) -> float:
        """The upper edge of the bin where the cumulative share of values reaches ``q`` percent."""
        total = int(self.counts.sum())
        if total == 0:
            return 0.0
        index = int(np.searchsorted(np.cumsum(self.counts) / total, q / 100.0))
        return (min(index, self.bins - 1) + 1) * self.top / self.bins


def _with_outputs(proto: onnx.ModelProto, names: Sequence[str]) -> bytes:
    """The model serialized with ``names`` as extra outputs; ``proto`` is left as it was
    (outputs appended, serialized, removed: no second in-memory copy of the weights)."""
    present = {o.name for o in proto.graph.output}
    added = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names if n not in present]
    proto.graph.output.extend(added)
    try:
        return proto.SerializeToString()
    finally:
        del proto.graph.output[len(proto.graph.output) - len(added):]


def activation_ranges(
    proto: onnx.ModelProto,
    tensors: Sequence[str],
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    percentile: float = PERCENTILE,
) -> dict[str, float]:
    """``{tensor: threshold}``, the ``percentile`` of ``|tensor|`` over every batch, one batch in memory."""
    # Every measured tensor is a graph output, so none of their buffers can be reused within a
    # run; without the arena they are freed after each batch instead of pooled for good. No
    # prepacking (a second copy of the weights), no optimization (nor folded ones).
    session = ort_session(_with_outputs(proto, tensors), arena=False, prepacking=False, optimization="none",
                          what="ONNX Runtime cannot run the graph to calibrate it")
    histograms = {name: AbsHistogram() for name in tensors}
    for feed in batches:
        outputs = session.run(list(tensors), dict(feed))
        for name in tensors:
            histograms[name].add(outputs.pop(0))  # each batch output freed as soon as it is counted
    return {name: h.percentile(percentile) for name, h in histograms.items()}
