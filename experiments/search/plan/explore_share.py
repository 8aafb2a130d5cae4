"""The digits pruning benchmark with the local sampler's explore shares set (an experiment, not a setting):

    python experiments/search/plan/explore_share.py --explore 0.5 --seeds 0 1            # TPE's share, always
    python experiments/search/plan/explore_share.py --explore-pruning 1.0 --seeds 0 1 2  # once a pruned trial is on the front

writes /tmp/bench/digits_explore_<explore>_<explore-pruning>.jsonl."""

import argparse
import runpy
import sys

import tuner.search.front_mutation as front_mutation

parser = argparse.ArgumentParser()
parser.add_argument("--explore", type=float, default=front_mutation.EXPLORE)
parser.add_argument("--explore-pruning", type=float, default=front_mutation.EXPLORE_PRUNING)
parser.add_argument("--seeds", nargs="+", default=["0"])
args = parser.parse_args()
defaults = list(front_mutation.FrontMutation.__init__.__defaults__)
defaults[1], defaults[-1] = args.explore, args.explore_pruning  # (seed, explore, max_changes, canonical, explore_pruning)
front_mutation.FrontMutation.__init__.__defaults__ = tuple(defaults)
sys.argv = ["benchmark.py", "experiments/digits_cnn_pruning/experiment.yaml", "--strategies", "default", "--seeds",
            *args.seeds, "--trials", "60",
            "--out", f"/tmp/bench/digits_explore_{args.explore}_{args.explore_pruning}.jsonl"]
sys.path.insert(0, "experiments/search")
runpy.run_path("experiments/search/benchmark.py", run_name="__main__")
