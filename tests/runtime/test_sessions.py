"""The one way an ONNX Runtime session is made: its options, its sources, and its refusals as one line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import m2pt_deploy.runtime.sessions as sessions
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.metadata import OPTIMIZED_KEY, set_metadata
from m2pt_deploy.runtime.sessions import cpu_session, is_optimized, ort_session, physical_cores, session_options
from tests.tiny import TINY

LEVELS = ort.GraphOptimizationLevel


def _labelled_optimized(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy carrying the record ``--optimize`` leaves; ``optimization="auto"`` reads only that."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    set_metadata(out, OPTIMIZED_KEY, {"runtime": "onnxruntime"})
    return out


def _sources(proto: onnx.ModelProto, tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "model.onnx"
    onnx.save(proto, path)
    return {"str": str(path), "path": path, "bytes": proto.SerializeToString(), "proto": proto}


def test_thread_and_execution_settings() -> None:
    options = session_options(threads=3)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_memory_and_spinning_switches(tmp_path: Path) -> None:
    options = session_options(threads=1, spinning=False, arena=False, prepacking=False,
                              optimized_model_path=tmp_path / "seen.onnx")
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.disable_prepacking") == "1"
    assert options.enable_cpu_mem_arena is False
    assert options.optimized_model_filepath == os.fspath(tmp_path / "seen.onnx")
    assert session_options(threads=1).enable_cpu_mem_arena is True


@pytest.mark.parametrize(("optimization", "level"), [
    ("all", LEVELS.ORT_ENABLE_ALL), ("extended", LEVELS.ORT_ENABLE_EXTENDED), ("none", LEVELS.ORT_DISABLE_ALL),
])
def test_explicit_optimization_levels_win_over_the_models_record(good_proto, optimization, level) -> None:
    labelled = _labelled_optimized(good_proto)
    assert session_options(threads=1, optimization=optimization).graph_optimization_level == level
    assert session_options(labelled, threads=1, optimization=optimization).graph_optimization_level == level


@pytest.mark.parametrize("kind", ["str", "path", "bytes", "proto"])
def test_auto_optimization_reads_every_kind_of_source(good_proto, tmp_path, kind) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "opt").mkdir()
    plain = _sources(good_proto, tmp_path / "plain")[kind]
    labelled = _sources(_labelled_optimized(good_proto), tmp_path / "opt")[kind]
    assert session_options(plain, threads=1).graph_optimization_level == LEVELS.ORT_ENABLE_ALL  # type: ignore[arg-type]
    assert session_options(labelled, threads=1).graph_optimization_level == LEVELS.ORT_DISABLE_ALL  # type: ignore[arg-type]
    # No model to read: optimize, as for any file not already optimized.
    assert session_options(threads=1).graph_optimization_level == LEVELS.ORT_ENABLE_ALL


def test_is_optimized_reads_only_the_record(good_proto) -> None:
    assert not is_optimized(good_proto)
    assert is_optimized(_labelled_optimized(good_proto))


def test_path_bytes_and_proto_give_the_same_session(good_proto, tmp_path) -> None:
    x = np.random.default_rng(0).standard_normal((2, *TINY.input_size), dtype=np.float32)
    outputs = {}
    for kind, source in _sources(good_proto, tmp_path).items():
        session = ort_session(source, threads=1)  # type: ignore[arg-type]
        assert [i.name for i in session.get_inputs()] == ["pixel_values"]
        assert session.get_providers() == ["CPUExecutionProvider"]
        assert session.get_session_options().intra_op_num_threads == 1
        outputs[kind] = session.run(None, {"pixel_values": x})[0]
    assert outputs["str"].shape == (2, TINY.num_classes)
    # The same graph with the same options on one thread: the same numbers, bit for bit.
    for kind, y in outputs.items():
        np.testing.assert_array_equal(y, outputs["str"], err_msg=kind)


def test_given_options_are_used_as_they_are(good_onnx) -> None:
    options = session_options(threads=2, optimization="extended")
    session = ort_session(good_onnx, options=options)
    got = session.get_session_options()
    assert got.intra_op_num_threads == 2 and got.graph_optimization_level == LEVELS.ORT_ENABLE_EXTENDED


def test_optimized_model_path_is_where_onnx_runtime_writes_its_graph(good_onnx, tmp_path) -> None:
    seen = tmp_path / "seen.onnx"
    ort_session(good_onnx, threads=1, optimized_model_path=seen)
    assert onnx.load(seen).graph.input[0].name == "pixel_values"


def test_cpu_session_uses_the_serving_options(good_onnx, good_proto, tmp_path) -> None:
    got = cpu_session(good_onnx, threads=1, spinning=False).get_session_options()
    assert got.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert got.graph_optimization_level == LEVELS.ORT_ENABLE_ALL
    labelled = tmp_path / "labelled.onnx"
    onnx.save(_labelled_optimized(good_proto), labelled)
    assert cpu_session(labelled, threads=1).get_session_options().graph_optimization_level == LEVELS.ORT_DISABLE_ALL


def _one_line(e: pytest.ExceptionInfo[M2ptError]) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text, text
    assert e.value.__suppress_context__, "ONNX Runtime's own exception is not chained into the report"
    return text


@pytest.mark.parametrize("content", [b"", b"not an onnx model\n" * 4, b"\x08\x07" + b"\xff" * 64],
                         ids=["empty", "text", "garbage"])
def test_an_invalid_file_is_one_line_naming_it(tmp_path, content) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    with pytest.raises(M2ptError) as e:
        cpu_session(bad)
    assert _one_line(e).startswith(f"{bad}: ONNX Runtime cannot load this model: ")
    assert e.value.path == str(bad)


def test_a_missing_file_is_one_line_naming_it(tmp_path) -> None:
    missing = tmp_path / "missing.onnx"
    with pytest.raises(M2ptError) as e:
        cpu_session(missing)
    assert _one_line(e).startswith(f"{missing}: ONNX Runtime cannot load this model: ")


def test_invalid_bytes_are_refused_with_the_callers_words() -> None:
    # With options given the bytes reach ONNX Runtime itself; without, reading them fails first.
    for options in (session_options(threads=1), None):
        with pytest.raises(M2ptError) as e:
            ort_session(b"\x08\x07" + b"\xff" * 64, options=options, what="grouping")
        assert _one_line(e).startswith("grouping: ")
        assert e.value.path is None


def test_a_graph_onnx_runtime_rejects_names_the_file_given(good_proto, tmp_path) -> None:
    good_proto.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(M2ptError) as e:
        ort_session(good_proto, threads=1, path=tmp_path / "edited.onnx")
    text = _one_line(e)
    assert text.startswith(f"{tmp_path / 'edited.onnx'}: ONNX Runtime cannot load this model: ")
    assert "NoSuchOp" in text


def test_physical_cores_counts_smt_siblings_once(monkeypatch) -> None:
    siblings = {0: "0,2", 2: "0,2", 1: "1,3", 3: "1,3", 5: "5"}

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        cpu = int(self.parent.parent.name.removeprefix("cpu"))
        if cpu == 7:  # a CPU whose topology cannot be read counts as its own core
            raise OSError("no topology")
        return siblings[cpu] + "\n"

    monkeypatch.setattr(sessions.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 5, 7}, raising=False)
    monkeypatch.setattr(Path, "read_text", read_text)
    assert physical_cores() == 4  # {0,2}, {1,3}, {5}, {7}


def test_physical_cores_without_affinity_halves_the_cpu_count(monkeypatch) -> None:
    monkeypatch.delattr(sessions.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(sessions.os, "cpu_count", lambda: 8)
    assert physical_cores() == 4
    monkeypatch.setattr(sessions.os, "cpu_count", lambda: None)
    assert physical_cores() == 1


def test_physical_cores_on_this_machine_is_within_its_cpus() -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip(reason="this platform has no os.sched_getaffinity")
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))
