"""mmgraph.nn.edges: edge dot products and weighted propagation equal the gather / scatter formulas, in
value and gradient."""
import pytest
import torch

from mmgraph.nn.edges import EdgeGraph, edge_dot


def _graph(n=30, e=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    pairs = torch.unique(torch.randint(0, n, (2, e), generator=g), dim=1)   # distinct (src, dst)
    return pairs[:, torch.randperm(pairs.shape[1], generator=g)], n           # not sorted by either end


def test_dot_equals_gather_formula_with_gradients():
    ei, n = _graph()
    graph = EdgeGraph(ei, n)
    a = torch.randn(n, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(ei.shape[1], dtype=torch.float64)
    got, ref = graph.dot(a, b), (a[ei[0]] * b[ei[1]]).sum(-1)
    torch.testing.assert_close(got, ref)
    for x, y in zip(torch.autograd.grad((got * w).sum(), [a, b]), torch.autograd.grad((ref * w).sum(), [a, b])):
        torch.testing.assert_close(x, y)
    # one argument: a[src] . a[dst]
    got, ref = graph.dot(a), (a[ei[0]] * a[ei[1]]).sum(-1)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(torch.autograd.grad((got * w).sum(), a)[0], torch.autograd.grad((ref * w).sum(), a)[0])


def test_propagate_equals_scatter_formula_with_gradients():
    ei, n = _graph(seed=1)
    graph = EdgeGraph(ei, n)
    x = torch.randn(n, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(ei.shape[1], dtype=torch.float64, requires_grad=True)
    got = graph.propagate(x, w)
    ref = torch.zeros(n, 4, dtype=torch.float64).index_add(0, ei[1], w.unsqueeze(1) * x[ei[0]])
    torch.testing.assert_close(got, ref)
    up = torch.randn(n, 4, dtype=torch.float64)
    for p, q in zip(torch.autograd.grad((got * up).sum(), [x, w]), torch.autograd.grad((ref * up).sum(), [x, w])):
        torch.testing.assert_close(p, q)
    with torch.no_grad():
        torch.testing.assert_close(graph.propagate(x, w), ref)


def test_blocked_dot_spans_several_blocks_and_rejects_repeated_pairs():
    ei, n = _graph(n=50, e=400, seed=2)
    a, b = torch.randn(n, 3), torch.randn(n, 3)
    torch.testing.assert_close(edge_dot(a, b, ei[0], ei[1], block=7), (a[ei[0]] * b[ei[1]]).sum(-1))
    with pytest.raises(ValueError, match="repeats"):
        EdgeGraph(torch.tensor([[0, 0], [1, 1]]), 3)
