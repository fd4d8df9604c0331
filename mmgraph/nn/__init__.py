"""Neural-network building blocks: propagation layers, sparse operators and modality fusion."""
from mmgraph.nn.conv import LightGCNConv, LightGCNEncoder, degree_normalized
from mmgraph.nn.dropout import Dropout
from mmgraph.nn.edges import EdgeGraph
from mmgraph.nn.fusion import SphericalBezierFusion, lerp, slerp, spherical_bezier
from mmgraph.nn.normalize import row_normalize
from mmgraph.nn.sparse import SparseAdj, gather_rows, unique_rows

__all__ = ["Dropout", "EdgeGraph", "LightGCNConv", "LightGCNEncoder", "SparseAdj", "SphericalBezierFusion",
           "degree_normalized", "gather_rows", "lerp", "slerp", "row_normalize", "spherical_bezier", "unique_rows"]
