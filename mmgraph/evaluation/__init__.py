"""Full-ranking evaluation of the shared protocol: metrics, the batched Evaluator, group metrics and
top-K retrieval (exact torch and FAISS), and the top-K export with raw ids."""
from mmgraph.evaluation.evaluator import Evaluator, combine_shards, unseen_items
from mmgraph.evaluation.export import recommend, resolve_users, write_table
from mmgraph.evaluation.groups import popularity_group_metrics, popularity_groups, user_group_metrics
from mmgraph.evaluation.metrics import DEFAULT_KS, METRICS, metric_names, topk_metrics
from mmgraph.evaluation.retrieval import topk_exact, topk_faiss

__all__ = ["Evaluator", "combine_shards", "unseen_items", "topk_metrics", "metric_names", "METRICS",
           "DEFAULT_KS", "popularity_groups", "popularity_group_metrics", "user_group_metrics",
           "topk_exact", "topk_faiss", "recommend", "resolve_users", "write_table"]
