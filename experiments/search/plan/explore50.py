"""The digits pruning benchmark with the local sampler's explore share at 0.5 instead of 0.25 (an experiment, not a
setting): python experiments/search/plan/explore50.py 0 1  (seeds; writes /tmp/bench/digits_explore50.jsonl)"""

import runpy
import sys

import tuner.search.front_mutation as front_mutation

defaults = list(front_mutation.FrontMutation.__init__.__defaults__)
defaults[1] = 0.5  # (seed, explore, max_changes, canonical)
front_mutation.FrontMutation.__init__.__defaults__ = tuple(defaults)
sys.argv = ["benchmark.py", "experiments/digits_cnn_pruning/experiment.yaml", "--strategies", "default", "--seeds",
            *sys.argv[1:], "--trials", "60", "--out", "/tmp/bench/digits_explore50.jsonl"]
sys.path.insert(0, "experiments/search")
runpy.run_path("experiments/search/benchmark.py", run_name="__main__")
