"""Neural-network building blocks: propagation layers, sparse operators and modality fusion."""
from mmgraph.nn.conv import LightGCNConv, LightGCNEncoder
from mmgraph.nn.edges import EdgeGraph
from mmgraph.nn.fusion import SphericalBezierFusion, lerp, slerp, spherical_bezier
from mmgraph.nn.normalize import row_normalize
from mmgraph.nn.sparse import SparseAdj

__all__ = ["EdgeGraph", "LightGCNConv", "LightGCNEncoder", "SparseAdj", "SphericalBezierFusion", "lerp", "slerp",
           "row_normalize", "spherical_bezier"]
