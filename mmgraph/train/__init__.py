"""Training: configs, the BPR sampler, the Trainer and end-to-end runs."""
from mmgraph.train.config import expand_grid, load_config, parse_overrides
from mmgraph.train.run import (build_model, build_plugins, build_run_graph, grid_search, load_dataset, load_run,
                               train)
from mmgraph.train.sampler import BPRSampler
from mmgraph.train.trainer import Trainer

__all__ = ["load_config", "expand_grid", "parse_overrides", "train", "grid_search", "load_run", "load_dataset",
           "build_model", "build_run_graph", "build_plugins", "BPRSampler", "Trainer"]
