"""CPU integer paths, and why 7-bit weights cannot saturate the int16 sums of AVX2 kernels."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from m2pt_deploy.cpu import INT8_TARGETS, cpu_flags, int8_target, saturates, weaker_than

# /proc/cpuinfo flag sets of the CPUs this project has met (trimmed to the integer flags).
EPYC_AVX2 = {"sse4_2", "avx", "avx2", "fma"}
SKYLAKE_SP = EPYC_AVX2 | {"avx512f", "avx512bw", "avx512vl"}
EPYC_ZEN4 = SKYLAKE_SP | {"avx512_vnni", "avx512_bf16"}
ALDER_LAKE = EPYC_AVX2 | {"avx_vnni"}
SAPPHIRE_RAPIDS = EPYC_ZEN4 | {"amx_tile", "amx_int8", "amx_bf16"}


def test_targets_from_flags() -> None:
    assert int8_target(EPYC_AVX2) == "avx2"
    assert int8_target(SKYLAKE_SP) == "avx512"
    assert int8_target(EPYC_ZEN4) == "vnni"
    assert int8_target(ALDER_LAKE) == "vnni"
    assert int8_target(SAPPHIRE_RAPIDS) == "amx"
    assert int8_target({"sse2"}) == "avx2"  # the floor: ONNX Runtime's oldest x86 int8 path saturates too
    assert int8_target() in INT8_TARGETS and isinstance(cpu_flags(), frozenset)


def test_which_paths_saturate_and_which_serving_is_weaker() -> None:
    assert [saturates(t) for t in INT8_TARGETS] == [True, True, False, False]
    assert weaker_than("avx2", "vnni") and weaker_than("avx512", "amx")
    assert not weaker_than("vnni", "avx2") and not weaker_than("avx2", "avx2") and not weaker_than("amx", "vnni")


def vpmaddubsw_dot(a: np.ndarray, w: np.ndarray) -> int:
    """u8 · s8 dot product as AVX2's VPMADDUBSW + VPMADDWD compute it: each pair of products
    is summed into a saturating int16, the pair sums are then added in int32."""
    products = a.astype(np.int64) * w.astype(np.int64)
    pairs = np.clip(products[0::2] + products[1::2], -32768, 32767)
    return int(pairs.sum())


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 64), st.integers(0, 2**32 - 1))
def test_seven_bit_weights_never_saturate(pairs: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, 2 * pairs)
    w = rng.integers(-64, 65, 2 * pairs)  # what --int8-target avx2 writes (max |w| asserted in test_quantize)
    assert vpmaddubsw_dot(a, w) == int(a @ w)


def test_eight_bit_weights_do_saturate_on_large_activations() -> None:
    a = np.array([255, 255, 200, 3])
    w = np.array([127, 127, -100, 5])
    assert int(a @ w) == 44785 and vpmaddubsw_dot(a, w) == 32767 - 19985
