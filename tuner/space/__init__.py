"""The search space: the YAML file's schema and parser (`file`), the `auto` space (`auto`), and the file
resolved against one model (`SearchSpace`)."""

from tuner.space.auto import AUTO, auto_space_file
from tuner.space.file import Fusion, PruneRange, Rule, SpaceFile, load_space_file
from tuner.space.search_space import PRUNED, SearchSpace

__all__ = ["AUTO", "PRUNED", "Fusion", "PruneRange", "Rule", "SearchSpace", "SpaceFile", "auto_space_file", "load_space_file"]
