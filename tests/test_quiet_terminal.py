"""What a newcomer's terminal shows stays short: coupled layers in one pattern, a Hugging Face load report in
one line."""

import logging

import pytest

from tuner.build.prune import compact_names


def test_layers_coupled_across_blocks_are_written_as_one_pattern():
    names = [f"encoder.layer.{i}.attention.attn.{p}" for i in range(12) for p in ("q", "k", "v")]
    assert compact_names(names) == "encoder.layer.{0..11}.attention.attn.{q,k,v}"
    assert compact_names(["conv1", "layer1.0.conv2"]) == "conv1, layer1.0.conv2"  # few, or of other shapes
    # braces would claim layer.1.b, which is not among them: listed as they are
    assert compact_names(["layer.0.a", "layer.0.b", "layer.1.a"]) == "layer.0.a, layer.0.b, layer.1.a"
    assert compact_names(["h.0.x", "h.2.x", "h.5.x"]) == "h.{0,2,5}.x"


def test_a_hugging_face_load_report_becomes_one_line_while_a_task_loads(tmp_path, caplog):
    """The report as transformers 5 logs it (a table, with ANSI styles, one row per key and a note per status)."""
    task_file = tmp_path / "task.py"
    task_file.write_text(
        "import logging\n"
        "def make_task():\n"
        "    report = ('\\x1b[1mBertModel LOAD REPORT\\x1b[0m from: /models/minilm\\nKey | Status\\n'\n"
        "              'pooler.dense.weight | UNEXPECTED\\npooler.dense.bias | UNEXPECTED\\nhead.w | MISSING\\n'\n"
        "              '\\nNotes:\\n- UNEXPECTED:\\tcan be ignored\\n- MISSING:\\tnewly initialized')\n"
        "    logging.getLogger('transformers.modeling_utils').warning(report)\n"
        "    logging.getLogger('transformers.modeling_utils').warning('another warning')\n"
        "    raise RuntimeError('stop here')\n")
    from tuner.core.errors import TaskError
    from tuner.taskref import TaskRef

    with caplog.at_level(logging.WARNING, logger="transformers.modeling_utils"), pytest.raises(TaskError):
        TaskRef(f"{task_file}:make_task").load()
    assert [r.getMessage() for r in caplog.records] == [
        "BertModel loaded from /models/minilm: checkpoint keys 2 unexpected, 1 missing "
        "(transformers' load report, in one line)", "another warning"]
    logger = logging.getLogger("transformers.modeling_utils")
    assert not logger.filters  # only while the task loads
