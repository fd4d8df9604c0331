"""Benchmarks: methods x datasets x seeds, mean ± std over seeds, paired t-tests, one table.

* :mod:`~mmgraph.benchmark.runner` -- parse ``lightgcn,freedom+cross``, run every (method, dataset, seed)
  through grid searches (validation-only selection, resumable);
* :mod:`~mmgraph.benchmark.report` -- ``results.csv``, ``summary.md`` / ``summary.csv``, the bar chart,
  popularity groups;
* :mod:`~mmgraph.benchmark.stats` -- mean / std and the paired t-test (no scipy);
* :mod:`~mmgraph.benchmark.doc` -- ``docs/results.md`` with published claims checked against the table.
"""
from mmgraph.benchmark.report import read_results, summarise, write_report
from mmgraph.benchmark.runner import MethodSpec, parse_methods, run_benchmark, seed_list
from mmgraph.benchmark.stats import mean_std, paired_ttest

__all__ = ["MethodSpec", "parse_methods", "run_benchmark", "seed_list", "read_results", "summarise",
           "write_report", "mean_std", "paired_ttest"]
