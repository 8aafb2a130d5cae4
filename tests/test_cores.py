"""Which cores time latency and which build, and ORT sessions that must stay off the latency core."""

import os
import subprocess
import sys
import textwrap

import pytest

from tuner.measure import cores
from tuner.measure.cores import split_cores


def test_the_latency_cores_and_their_siblings_are_kept_from_builds(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    siblings = {7: {3, 7}, 6: {2, 6}}  # a 4-core machine with 2 hyperthreads per core, numbered as Linux does
    monkeypatch.setattr(cores, "_siblings", lambda cpu: siblings.get(cpu, {cpu}))
    timed, builds = split_cores(1)
    assert timed == {7} and builds == {0, 1, 2, 4, 5, 6}  # 3 shares core 7's execution units
    timed, builds = split_cores(2)
    assert timed == {6, 7} and builds == {0, 1, 4, 5}


def test_no_split_when_no_core_is_left_for_builds(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(cores, "_siblings", lambda cpu: {cpu})
    assert split_cores(2) is None
    assert split_cores(1) == ({1}, {0})
    monkeypatch.setattr(cores, "_siblings", lambda cpu: {0, 1})  # one core, two hyperthreads
    assert split_cores(1) is None


def test_sibling_lists_are_read_from_sysfs():
    if not os.path.exists("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list"):
        pytest.skip("no CPU topology in sysfs")
    assert 0 in cores._siblings(0)


def test_default_ort_sessions_become_single_threaded_and_still_run(tmp_path):
    # in a fresh process: the change is process-wide, as it is in a worker
    code = textwrap.dedent(f"""
        import numpy as np, onnx, onnxruntime as ort
        from onnx import helper, TensorProto
        from tuner.measure.latency import confine_default_ort_sessions
        assert ort.SessionOptions().intra_op_num_threads == 0
        confine_default_ort_sessions()
        from onnxruntime.quantization import calibrate  # what the calibrator will construct
        options = calibrate.onnxruntime.SessionOptions()
        assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
        onnx.save(helper.make_model(graph), r"{tmp_path / 'relu.onnx'}")
        session = ort.InferenceSession(r"{tmp_path / 'relu.onnx'}", options, providers=["CPUExecutionProvider"])
        print(session.run(None, {{"x": np.array([-1.0, 2.0], dtype=np.float32)}})[0].tolist())
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[0.0, 2.0]"
