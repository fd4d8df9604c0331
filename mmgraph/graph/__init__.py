"""Graph builders: item-item kNN graphs (FREEDOM, AnchorRec), co-occurrence graphs (CROSS, BR-MRS),
the user-item bipartite graph, and the run's PyG ``HeteroData`` (:mod:`mmgraph.graph.relations`: the
relations a method asks for, built once through an on-disk content-hash cache; models read their
graphs from it).

Sparse item graphs are :class:`ItemGraph` objects ``(edge_index [2, E], edge_weight [E], num_nodes)``
in the row-gathers convention ``h_new[row] = sum_col w[row, col] h[col]`` (see :mod:`mmgraph.graph.base`).
"""
from mmgraph.graph.base import ItemGraph, KNNResult, combine_graphs, normalize_graph
from mmgraph.graph.cache import cache_key, cached, default_cache_dir, load_object, save_object
from mmgraph.graph.cooccurrence import cooccurrence_graph, cooccurrence_topk, item_overlap
from mmgraph.graph.hetero import build_hetero_data, item_graph_from_hetero
from mmgraph.graph.item_graphs import (FREEDOM_IMAGE_WEIGHT, anchor_features, anchorrec_graph,
                                       anchorrec_graphs, brmrs_item_graph, brmrs_user_graph,
                                       build_item_graphs, user_mean_features,
                                       freedom_graph, freedom_modality_graph, freedom_weights)
from mmgraph.graph.knn import knn_graph, knn_item_graph, l2_normalize
from mmgraph.graph.relations import (RELATION_KINDS, Relation, attach_features, bipartite_adj, build_graph,
                                     build_relation,
                                     check_graph, interaction_adj, interaction_pairs, load_graph,
                                     neighbour_lists, node_counts, node_features, register_relation_kind,
                                     relation_adj, relation_graph, save_graph)

__all__ = [
    "ItemGraph", "KNNResult", "combine_graphs", "normalize_graph",
    "knn_graph", "knn_item_graph", "l2_normalize",
    "freedom_graph", "freedom_modality_graph", "freedom_weights", "FREEDOM_IMAGE_WEIGHT",
    "anchorrec_graph", "anchorrec_graphs", "anchor_features", "brmrs_item_graph", "brmrs_user_graph",
    "user_mean_features", "build_item_graphs",
    "cooccurrence_graph", "cooccurrence_topk", "item_overlap",
    "build_hetero_data", "item_graph_from_hetero",
    "Relation", "RELATION_KINDS", "register_relation_kind", "build_relation", "build_graph", "check_graph",
    "save_graph", "load_graph", "attach_features", "node_counts", "node_features", "interaction_pairs",
    "interaction_adj", "bipartite_adj", "relation_adj", "relation_graph", "neighbour_lists",
    "cached", "cache_key", "default_cache_dir", "save_object", "load_object",
]
