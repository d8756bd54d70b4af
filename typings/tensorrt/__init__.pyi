# Type stubs for the part of TensorRT's Python API that m2pt-deploy calls.
#
# Written by hand from NVIDIA's TensorRT Python API reference, version 10.13
# (docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api), and checked against
# the 11.x migration guide: the precision BuilderFlags used on the TensorRT 10 path
# (FP16, BF16, INT8, FP8) are gone in 11, where networks are always strongly typed.
# Only what the code uses is declared, so a call to anything else fails type checking.
from enum import IntEnum
from typing import Any

__version__: str

class Logger:
    class Severity(IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4
    INTERNAL_ERROR = Severity.INTERNAL_ERROR
    ERROR = Severity.ERROR
    WARNING = Severity.WARNING
    INFO = Severity.INFO
    VERBOSE = Severity.VERBOSE
    min_severity: Logger.Severity
    def __init__(self, min_severity: Logger.Severity = ...) -> None: ...

class DataType(IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9

class MemoryPoolType(IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4
    TACTIC_SHARED_MEMORY = 5

class BuilderFlag(IntEnum):
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 4
    DISABLE_TIMING_CACHE = 5
    TF32 = 6
    SPARSE_WEIGHTS = 7
    SAFETY_SCOPE = 8
    OBEY_PRECISION_CONSTRAINTS = 9
    PREFER_PRECISION_CONSTRAINTS = 10
    DIRECT_IO = 11
    REJECT_EMPTY_ALGORITHMS = 12
    VERSION_COMPATIBLE = 13
    EXCLUDE_LEAN_RUNTIME = 14
    FP8 = 15
    ERROR_ON_TIMING_CACHE_MISS = 16
    BF16 = 17
    DISABLE_COMPILATION_CACHE = 18
    STRIP_PLAN = 19
    WEIGHT_STREAMING = 21

class NetworkDefinitionCreationFlag(IntEnum):
    STRONGLY_TYPED = 1

class TensorIOMode(IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2

class Dims:
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> int: ...

class IProgressMonitor:
    def __init__(self) -> None: ...
    def phase_start(self, phase_name: str, parent_phase: str, num_steps: int) -> None: ...
    def step_complete(self, phase_name: str, step: int) -> bool: ...
    def phase_finish(self, phase_name: str) -> None: ...

class ITimingCache: ...

class IOptimizationProfile:
    def set_shape(self, input: str, min: tuple[int, ...], opt: tuple[int, ...], max: tuple[int, ...]) -> None: ...

class INetworkDefinition:
    num_inputs: int
    num_outputs: int
    num_layers: int

class IBuilderConfig:
    builder_optimization_level: int
    progress_monitor: IProgressMonitor
    def set_flag(self, flag: BuilderFlag) -> None: ...
    def get_flag(self, flag: BuilderFlag) -> bool: ...
    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None: ...
    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int: ...
    def add_optimization_profile(self, profile: IOptimizationProfile) -> int: ...
    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache: ...
    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool: ...

class IHostMemory:
    nbytes: int
    def __buffer__(self, flags: int, /) -> memoryview: ...

class Builder:
    def __init__(self, logger: Logger) -> None: ...
    def create_network(self, flags: int = ...) -> INetworkDefinition: ...
    def create_builder_config(self) -> IBuilderConfig: ...
    def create_optimization_profile(self) -> IOptimizationProfile: ...
    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None: ...

class OnnxParser:
    num_errors: int
    def __init__(self, network: INetworkDefinition, logger: Logger) -> None: ...
    def parse_from_file(self, model: str) -> bool: ...
    def get_error(self, index: int) -> Any: ...

class ICudaEngine:
    name: str
    num_io_tensors: int
    num_optimization_profiles: int
    device_memory_size_v2: int
    def get_tensor_name(self, index: int) -> str: ...
    def get_tensor_mode(self, name: str) -> TensorIOMode: ...
    def get_tensor_dtype(self, name: str) -> DataType: ...
    def get_tensor_shape(self, name: str) -> Dims: ...
    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]: ...
    def serialize(self) -> IHostMemory: ...

class Runtime:
    def __init__(self, logger: Logger) -> None: ...
    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None: ...
