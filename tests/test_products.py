"""mmgraph.utils.products: the dense products of a computation, forward and backward, by kind and shape."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmgraph.utils.products import ProductCounter, flops, time_product, time_sparse_product


def test_linear_forward_and_backward_products():
    x = torch.randn(30, 8, requires_grad=True)
    w = torch.randn(5, 8, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    with ProductCounter() as counter:
        F.linear(x, w, b).pow(2).sum().backward()
    # forward x W^T [30, 8] x [8, 5]; backward dx = dy W [30, 5] x [5, 8], dW = dy^T x [5, 30] x [30, 8]
    assert sorted(counter.dense) == sorted([("mm", (30, 8, 5)), ("mm", (30, 5, 8)), ("mm", (5, 30, 8))])
    assert counter.gflop() == pytest.approx(2 * 3 * 30 * 8 * 5 / 1e9)
    assert counter.sparse == 0


def test_batched_vector_and_out_forms():
    a, b = torch.randn(4, 3, 8), torch.randn(4, 8, 6)
    m, v = torch.randn(7, 8), torch.randn(8)
    out = torch.empty(3, 6)
    with ProductCounter() as counter:
        torch.bmm(a, b)
        torch.mv(m, v)
        torch.mm(a[0], b[0], out=out)
        torch.addmm(out, a[1], b[1])
        torch.dot(v, v)
    assert counter.dense == [("bmm", (4, 3, 8, 6)), ("mv", (7, 8)), ("mm", (3, 8, 6)), ("mm", (3, 8, 6)),
                             ("dot", (8,))]
    assert [flops(p) for p in counter.dense] == [2 * 4 * 3 * 8 * 6, 2 * 7 * 8, 2 * 3 * 8 * 6, 2 * 3 * 8 * 6, 2 * 8]


def test_sparse_products_are_counted_apart():
    adj = torch.eye(6).to_sparse_csr()
    x = torch.randn(6, 4)
    with ProductCounter() as counter:
        adj @ x
        torch.sparse.mm(torch.eye(6).to_sparse(), x)
        x.t() @ x
    assert counter.dense == [("mm", (4, 6, 4))]
    assert counter.sparse == 2
    assert [(a.layout, shape) for a, shape in counter.sparse_products] == [(torch.sparse_csr, (6, 4)),
                                                                          (torch.sparse_coo, (6, 4))]


def test_sparse_products_are_timed_on_their_own_adjacency():
    n = 2000
    dense_rows = torch.eye(n).to_sparse_csr()
    many = (torch.rand(n, n) < 0.05).float().to_sparse_csr()      # 100x the nonzeros
    x = torch.randn(n, 32)
    counter = ProductCounter()
    with counter:
        dense_rows @ x
        dense_rows @ x
        many @ x
    assert len(counter.sparse_products) == 3
    assert counter.time_sparse_alone(min_seconds=0.001) > 0
    alone = [time_sparse_product(a, (n, 32), min_seconds=0.005) for a in (dense_rows, many)]
    assert alone[1] > alone[0]                       # the cost follows the sparsity, not the shapes
    for adj in (dense_rows, torch.eye(n).to_sparse()):
        out = torch.empty(n, 32).addmm_(adj, x, beta=0)  # the timed form is the product itself
        assert torch.allclose(out, x)


def test_time_alone_weights_each_shape_by_its_count():
    counter = ProductCounter()
    counter.dense = [("mm", (64, 64, 64))] * 3
    t = counter.time_alone(min_seconds=0.001)
    assert t > 0
    one = time_product(("mm", (64, 64, 64)), min_seconds=0.001)
    assert 0.2 * 3 * one < t < 5 * 3 * one      # the same shape's median, three times (timing noise aside)
