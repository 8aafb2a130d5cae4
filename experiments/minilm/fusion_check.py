"""Is anything faster than uniform dynamic int8 on MiniLM? Uniform per-tensor and per-channel dynamic int8,
each with every transformer-fusion combination at ORT levels extended and all, timed interleaved in one process.

    python experiments/minilm/fusion_check.py [ARTIFACT_DIR]      (default: tuner-runs/minilm/artifacts)
"""
import sys
import time

import numpy as np

from tuner.core.candidate import Candidate
from tuner.evaluate import EvalSettings, Evaluator
from tuner.measure.latency import latency_feeds
from tuner.measure.runtime import load_artifact
from tuner.taskref import TaskRef

ev = Evaluator(TaskRef("tuner.tasks.minilm:make_task", {}), EvalSettings(repeats=5, warmup=1), sys.argv[1] if len(sys.argv) > 1 else "tuner-runs/minilm/artifacts")
sess = {}
for prec in ("int8-dynamic", "int8-dynamic-pc"):
    for fus in ((), ("bias_gelu",), ("skip_layer_norm",), ("bias_gelu", "skip_layer_norm")):
        for lvl in ("extended", "all"):
            c = Candidate(precision=tuple((l, prec) for l in ev.layers), fusions=fus, opt_level=lvl)
            o = ev.evaluate(c)
            sess[(prec, fus, lvl)] = (load_artifact(o.artifact_dir + "/model.onnx"), o.metric)
names = [i.name for i in next(iter(sess.values()))[0].get_inputs()]
feeds = latency_feeds(ev.task, names, 1)
t = {k: [] for k in sess}
for r in range(5):
    for k, (s, _) in sess.items():
        for _ in range(30):
            a = time.perf_counter(); s.run(None, feeds); t[k].append(time.perf_counter() - a)
for k in sorted(t, key=lambda k: np.median(t[k])):
    print(f"{k[0]:16} {'+'.join(k[1]) or 'unfused':28} {k[2]:9} {np.median(t[k])*1e3:7.3f} ms  cos {sess[k][1]:.4f}")
