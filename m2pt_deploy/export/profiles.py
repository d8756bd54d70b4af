"""TensorRT optimization profiles for the one image input, checked before anything is built."""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping
from typing import Any

import onnx

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.onnx import INPUT_NAME, BatchSpec

__all__ = ["ShapeProfile", "profile_for"]

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ShapeProfile:
    """min / opt / max shapes of one input: what an engine accepts and what it is tuned for."""

    input_name: str
    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise M2ptError(f"profile for {self.input_name}: shapes of different ranks "
                            f"{self.min}, {self.opt}, {self.max}")
        for lo, opt, hi in zip(self.min, self.opt, self.max, strict=True):
            if not 1 <= lo <= opt <= hi:
                raise M2ptError(f"profile for {self.input_name}: needs 1 <= MIN <= OPT <= MAX in "
                                f"every dimension, got {self.min} / {self.opt} / {self.max}")

    @property
    def max_batch(self) -> int:
        return self.max[0]

    def check_batch(self, batch: int, *, source: str | None = None) -> None:
        """Refuse a batch the engine was not built for, naming the profile's bounds."""
        if not self.min[0] <= batch <= self.max[0]:
            side = "above the profile's MAX" if batch > self.max[0] else "below the profile's MIN"
            raise M2ptError(f"batch {batch} is {side} (engine profile {self.min[0]}:"
                            f"{self.opt[0]}:{self.max[0]}); rebuild with --batch", source)

    def trtexec_args(self) -> list[str]:
        def dims(shape: Shape) -> str:
            return f"{self.input_name}:{'x'.join(map(str, shape))}"

        return [f"--minShapes={dims(self.min)}", f"--optShapes={dims(self.opt)}",
                f"--maxShapes={dims(self.max)}"]

    def polygraphy_args(self) -> list[str]:
        """Shell-quoted: the brackets would otherwise be glob patterns."""
        def dims(shape: Shape) -> str:
            return shlex.quote(f"{self.input_name}:[{','.join(map(str, shape))}]")

        return ["--trt-min-shapes", dims(self.min), "--trt-opt-shapes", dims(self.opt),
                "--trt-max-shapes", dims(self.max)]

    def to_polygraphy(self) -> Any:
        """A ``polygraphy.backend.trt.Profile``; building one does not import TensorRT."""
        from polygraphy.backend.trt import Profile

        return Profile().add(self.input_name, self.min, self.opt, self.max)

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input_name, "min": list(self.min), "opt": list(self.opt),
                "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShapeProfile:
        return cls(d["input"], tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))


def profile_for(proto: onnx.ModelProto, batch: BatchSpec) -> ShapeProfile:
    """The profile for ``batch`` over the graph's one input, whose other dimensions must be fixed.

    A graph exported with a fixed batch only takes that batch, so a range is refused there.
    """
    if len(proto.graph.input) != 1:
        raise M2ptError(f"expected one graph input, got {len(proto.graph.input)}")
    value = proto.graph.input[0]
    dims = value.type.tensor_type.shape.dim
    if len(dims) < 2 or any(not d.HasField("dim_value") for d in dims[1:]):
        raise M2ptError(f"input {value.name}: needs a fixed shape past the batch dimension")
    rest = tuple(d.dim_value for d in dims[1:])
    fixed = dims[0].dim_value if dims[0].HasField("dim_value") else None
    if fixed is not None and (batch.min, batch.max) != (fixed, fixed):
        raise M2ptError(f"--batch {batch}: the ONNX graph was exported for batch {fixed} only; "
                        "export it with a dynamic batch")
    return ShapeProfile(value.name or INPUT_NAME, (batch.min, *rest), (batch.opt, *rest),
                        (batch.max, *rest))

