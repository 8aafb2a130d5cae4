"""Decoder LLMs: the KV-cache export against torch over decode steps, perplexity through the evaluation's reduce,
the tied output head as a searchable layer, MLP units pruned (tiny Llama-style decoder built in the test)."""

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny_llama
import torch

from tuner.build.export import export_onnx
from tuner.build.layers import quantizable_layers
from tuner.build.prune import prune
from tuner.core.candidate import Candidate
from tuner.core.records import TrialMeta
from tuner.evaluate import EvalSettings, Evaluator
from tuner.measure.generation import GenerationLatency, decode_and_prefill_ms
from tuner.measure.quality import score_all
from tuner.measure.runtime import load_artifact
from tuner.search.kinds import kind_timings
from tuner.taskref import TaskRef
from tuner.tasks.decoder import next_token_scores, perplexity

pytestmark = pytest.mark.slow  # exports of a decoder with its cache, seconds each

TESTS = str(Path(__file__).parent)
HEAD = "lm.lm_head"
EMBEDDING = "lm.model.embed_tokens"


@pytest.fixture(scope="module")
def task():
    return tiny_llama.make_task()


@pytest.fixture(scope="module")
def exported(task, tmp_path_factory):
    path = tmp_path_factory.mktemp("decoder") / "model.onnx"
    export_onnx(task.model, task.example_inputs, path, dynamic_axes=task.dynamic_axes)
    return load_artifact(path, 1)


def test_the_export_carries_the_cache_through_prefill_and_decode_steps_as_torch_does(task, exported):
    ids = task.evaluation.inputs[0][:3, :12]
    names = [i.name for i in exported.get_inputs()]
    assert len(names) == 1 + 2 * task.model.layers
    with torch.no_grad():
        expected = task.model.lm(torch.from_numpy(ids)).logits.numpy()  # the whole sequence at once, no cache
    empty = [t.numpy() for t in task.model.empty_cache(3)]
    outputs = exported.run(None, dict(zip(names, [ids[:, :8], *empty])))  # prefill 8 tokens
    np.testing.assert_allclose(outputs[0], expected[:, :8], atol=1e-4)
    cache = outputs[1:]
    for step in range(8, 12):  # then one token at a time, each with the cache the step before returned
        outputs = exported.run(None, dict(zip(names, [ids[:, step:step + 1], *cache])))
        np.testing.assert_allclose(outputs[0][:, 0], expected[:, step], atol=1e-4)
        cache = outputs[1:]
        assert cache[0].shape == (3, task.model.kv_heads, step + 1, task.model.head_dim)


def test_perplexity_of_the_artifact_is_torch_perplexity_and_agreement_is_one(task, exported):
    value, extra = score_all(exported, task.evaluation)
    ids = task.evaluation.inputs[0]
    with torch.no_grad():
        logits = task.model.lm(torch.from_numpy(ids)).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                            torch.from_numpy(ids[:, 1:]).reshape(-1))
    assert value == pytest.approx(float(torch.exp(nll)), rel=1e-4)
    assert extra["next_token_agreement"] == 1.0
    scores = next_token_scores(logits.numpy(), (ids,))
    assert scores.shape == (len(ids), ids.shape[1] - 1, 2) and perplexity(scores) == pytest.approx(value, rel=1e-4)


def test_decode_and_prefill_run_on_the_artifact_and_read_as_tokens_per_second(task, exported):
    timing = decode_and_prefill_ms(exported, task.evaluation.inputs[0][:1, :8], repeats=3, warmup=1)
    assert isinstance(timing, GenerationLatency)
    line = GenerationLatency(prefill_ms=200.0, decode_ms=25.0).summary(64)  # fixed numbers: the arithmetic only
    assert "prefill 64 tokens 200.0 ms (320 tokens/s)" in line and "25.00 ms/token (40.0 tokens/s)" in line


def test_the_tied_head_is_its_own_layer_and_is_built_in_4_bits_beside_8_bit_weights(task, tmp_path):
    layers = quantizable_layers(task.model)
    assert HEAD in layers
    assert task.model.lm.lm_head.weight.data_ptr() != task.model.lm.get_input_embeddings().weight.data_ptr()
    evaluator = Evaluator(TaskRef("tiny_llama.py:make_task", {}, TESTS), EvalSettings(repeats=2, warmup=1), tmp_path)
    down = "lm.model.layers.0.mlp.down_proj"
    result = evaluator.evaluate(Candidate(precision=((HEAD, "int4-b32"), (down, "int8-weight-b32"))))
    assert result.state == "COMPLETE", result.error
    graph = onnx.load(str(Path(result.artifact_dir) / "model.onnx")).graph
    nbits = {next(a.i for a in n.attribute if a.name == "N"): next(a.i for a in n.attribute if a.name == "bits")
             for n in graph.node if n.op_type == "MatMulNBits"}
    config = task.model.lm.config
    assert nbits == {config.vocab_size: 4, config.hidden_size: 8}  # the head in 4 bits, down_proj in 8, no other
    # the prefill of the task's prompt is timed on the same artifact beside the decode step, and recorded
    assert set(result.latency.phases) == {"prefill"}
    assert set(TrialMeta.attrs_of(result, 0.0)["latency_phases_ms"]) == {"prefill"}
    fp32 = evaluator.evaluate(Candidate())
    line = kind_timings({"fp32": fp32, "uniform int4": result})[1].line("perplexity")
    assert re.search(r"^uniform int4: [\d.]+ ms \([\d.]+x fp32\); prefill [\d.]+ ms \([\d.]+x fp32\)", line), line


def test_the_embedding_table_is_a_layer_of_its_own_built_in_4_bits_apart_from_the_head_that_shares_its_values(
        task, tmp_path):
    from tuner.build.kernels import mismatches
    from tuner.build.layers import layer_op_types
    from tuner.space.auto import auto_space_file

    ops = layer_op_types(task.model, task.example_inputs, dynamic_axes=task.dynamic_axes)
    assert ops[EMBEDDING] == "Gather" and ops[HEAD] == "MatMul"  # the head's table is a transposed copy of it
    rule = next(r for r in auto_space_file("auto", ops, [], 1).rules if r.match == EMBEDDING)
    assert set(rule.precision) == {"int4-b32", "fp32"}  # 4-bit tables only: ORT's quantizer builds no other
    evaluator = Evaluator(TaskRef("tiny_llama.py:make_task", {}, TESTS), EvalSettings(repeats=2, warmup=1), tmp_path)
    result = evaluator.evaluate(Candidate(precision=((EMBEDDING, "int4-b32"),)))
    assert result.state == "COMPLETE", result.error  # the kernel check found the table read by a 4-bit lookup
    graph = onnx.load(str(Path(result.artifact_dir) / "model.onnx")).graph
    lookups = [n for n in graph.node if "Gather" in n.op_type and n.input[0].startswith(f"{EMBEDDING}.weight")]
    assert [n.op_type for n in lookups] == ["GatherBlockQuantized"]
    assert not any(n.op_type == "MatMulNBits" for n in graph.node)  # the head stays fp32
    assert mismatches({EMBEDDING: "Gather"}, {EMBEDDING: "int4-b32"})  # a float lookup asked for 4 bits is refused


def test_latency_phases_hold_one_tensor_per_example_input(task):
    with pytest.raises(ValueError, match=rf"latency_phases\['prefill'\]. must be a tuple of {len(task.example_inputs)}"):
        replace(task, latency_phases={"prefill": task.example_inputs[:1]})
    with pytest.raises(ValueError, match="prompt_tokens must be in"):
        tiny_llama.make_task(prompt_tokens=0)


def test_mlp_units_are_pruned_by_channel_and_attention_in_whole_key_value_groups(task):
    from tuner.build.prune import pruning_groups

    groups = pruning_groups(task.model, task.example_inputs, task.output_layers)
    channels = [g for g in groups if not g.kv_groups]
    assert channels and all("mlp" in g.name and "self_attn" not in g.name for g in channels)
    attention = [g for g in groups if g.kv_groups]
    assert [g.members for g in attention] == [tuple(f"lm.model.layers.{i}.self_attn.{p}_proj" for p in "qkv")
                                              for i in range(2)]
    assert all(g.unit == "key/value groups" and g.consumers == (g.members[0].replace("q_proj", "o_proj"),)
               for g in attention)
    first = next(g for g in groups if "layers.0.mlp.up_proj" in g.name)
    pruned = prune(task.model, task.example_inputs, {first.name: 0.5, attention[1].name: 0.5}, task.output_layers)
    assert pruned.lm.model.layers[0].mlp.up_proj.out_features < task.model.lm.model.layers[0].mlp.up_proj.out_features
    assert pruned.layer_kv_heads() == [2, 1]
    with torch.no_grad():
        logits, *cache = pruned(*pruned.fit_inputs(task.example_inputs))
    assert logits.shape[-1] == tiny_llama.VOCAB and len(cache) == 2 * task.model.layers
    assert cache[2].shape[1] == 1 and cache[0].shape[1] == 2


def test_the_pruning_check_and_the_auto_space_take_key_value_groups_in_whole_groups(task):
    from tuner.build.prune import broken_groups, pruning_groups
    from tuner.space.auto import auto_space_file

    groups = pruning_groups(task.model, task.example_inputs, task.output_layers)
    # every group at once, the attention's cache cut to the heads it keeps: nothing breaks
    assert broken_groups(task.model, task.example_inputs, {g.name: 0.5 for g in groups}, task.output_layers) == {}
    space = auto_space_file("auto", {"lm.model.layers.0.self_attn.k_proj": "MatMul"}, groups, 8)
    rule = space.rules[0]
    assert rule.prune.values() == [0.0, 0.5]  # 2 key/value heads: keep both, or one


def test_a_candidate_with_a_key_value_group_pruned_is_built_calibrated_scored_and_timed_on_its_own_cache(
        task, tmp_path):
    from tuner.build.prune import pruning_groups
    from tuner.measure.quality import TorchSession

    group = next(g for g in pruning_groups(task.model, task.example_inputs, task.output_layers) if g.kv_groups)
    evaluator = Evaluator(TaskRef("tiny_llama.py:make_task", {}, TESTS), EvalSettings(repeats=2, warmup=1), tmp_path)
    pruned_fp32 = evaluator.evaluate(Candidate(prune=((group.name, 0.5),)))
    assert pruned_fp32.state == "COMPLETE", pruned_fp32.error
    session = load_artifact(Path(pruned_fp32.artifact_dir) / "model.onnx", 1)
    heads = [i.shape[1] for i in session.get_inputs()[1:]]
    assert heads == [1, 1, 2, 2]  # layer 0 caches one key/value head, layer 1 both
    assert set(pruned_fp32.latency.phases) == {"prefill"}  # decode and prefill timed on the cut cache
    # the artifact scores what the pruned torch model scores on the same text
    pruned = prune(task.model, task.example_inputs, {group.name: 0.5}, task.output_layers)
    evaluation = task.evaluation
    torch_score = score_all(TorchSession(pruned, len(evaluation.inputs)), evaluation)[0]
    assert pruned_fp32.metric == pytest.approx(torch_score, rel=1e-4)
    assert pruned_fp32.metric != pytest.approx(evaluator.evaluate(Candidate()).metric, rel=1e-3)
    # static int8 calibrates on the cut cache; 4-bit weights beside it
    proj = [layer for layer in evaluator.layers if "proj" in layer]
    mixed = evaluator.evaluate(Candidate(prune=((group.name, 0.5),),
                                         precision=tuple((layer, "int8" if "mlp" in layer else "int4-b32")
                                                         for layer in proj)))
    assert mixed.state == "COMPLETE", mixed.error
    assert mixed.cached_export  # the pruned export is shared with the fp32 candidate


def test_distillation_recovers_a_decoder_pruned_by_key_value_group(task, tmp_path):
    from tuner.build.prune import pruning_groups

    group = next(g for g in pruning_groups(task.model, task.example_inputs, task.output_layers) if g.kv_groups)
    evaluator = Evaluator(TaskRef("tiny_llama.py:make_task", {}, TESTS),
                          EvalSettings(repeats=2, warmup=1, distill_steps=20, distill_lr=1e-3), tmp_path)
    result = evaluator.evaluate(Candidate(prune=((group.name, 0.5),), recovery="distill"))
    assert result.state == "COMPLETE", result.error
    stats = result.model_stats
    assert stats["distill_steps"] == 20 and stats["distill_loss_after"] < stats["distill_loss_before"]


def test_a_key_value_group_is_pruned_whole_and_the_model_still_runs_and_exports(task, tmp_path):
    from tuner.build.kv_groups import grouped_query_attentions, prune_kv_groups

    attention = "lm.model.layers.1.self_attn"
    assert set(grouped_query_attentions(task.model)) == {f"lm.model.layers.{i}.self_attn" for i in range(2)}
    pruned = prune_kv_groups(task.model, {attention: 0.5})  # 2 key/value heads -> 1, with its 2 query heads
    kept = pruned.lm.model.layers[1].self_attn
    head_dim = task.model.head_dim
    assert (kept.k_proj.out_features, kept.v_proj.out_features) == (head_dim, head_dim)
    assert kept.q_proj.out_features == kept.o_proj.in_features == 2 * head_dim
    assert pruned.layer_kv_heads() == [2, 1] and task.model.layer_kv_heads() == [2, 2]  # the original is untouched
    with pytest.raises(ValueError, match="leaves none"):
        prune_kv_groups(task.model, {attention: 1.0})
    ids = torch.from_numpy(task.evaluation.inputs[0][:2, :10])
    with torch.no_grad():
        whole = pruned.lm(ids).logits
        prefill = pruned(ids[:, :6], *pruned.empty_cache(2))
        step = pruned(ids[:, 6:7], *prefill[1:])  # one decode step on the cache it returned
    assert step[3].shape == (2, 1, 7, head_dim)  # the pruned layer caches one key/value head
    torch.testing.assert_close(step[0][:, 0], whole[:, 6], atol=1e-4, rtol=1e-4)
    path = tmp_path / "pruned.onnx"
    export_onnx(pruned, (ids[:, :1], *pruned.empty_cache(1, 8, seed=0)), path, dynamic_axes=task.dynamic_axes)
    session = load_artifact(path, 1)
    names = [i.name for i in session.get_inputs()]
    outputs = session.run(None, dict(zip(names, [ids[:, :6].numpy(), *(t.numpy() for t in pruned.empty_cache(2))])))
    np.testing.assert_allclose(outputs[0], whole[:, :6].numpy(), atol=1e-4)


def test_the_torch_runtime_scores_and_times_a_decoder_pruned_by_key_value_group_on_its_own_cache(task, tmp_path):
    from tuner.build.prune import pruning_groups
    from tuner.evaluate_torch import TorchEvaluator

    group = next(g for g in pruning_groups(task.model, task.example_inputs, task.output_layers) if g.kv_groups)
    settings = EvalSettings(warmup=1, repeats=2, runtime="torch", device="cpu", torch_artifact="module")
    evaluator = TorchEvaluator(TaskRef("tiny_llama.py:make_task", {}, TESTS), settings, tmp_path)
    result = evaluator.evaluate(Candidate(prune=((group.name, 0.5),), compile_mode="none"))
    assert result.state == "COMPLETE", result.error
    record = json.loads((Path(result.artifact_dir) / "candidate.json").read_text())
    assert [shape[1] for shape in record["runtime"]["input_shapes"][1:]] == [1, 1, 2, 2]
    onnx_result = Evaluator(TaskRef("tiny_llama.py:make_task", {}, TESTS), EvalSettings(repeats=2, warmup=1),
                            tmp_path / "onnx").evaluate(Candidate(prune=((group.name, 0.5),)))
    assert result.metric == pytest.approx(onnx_result.metric, rel=1e-4)  # the same pruned model, either runtime
