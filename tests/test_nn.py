import numpy as np
import pytest
import torch

from mmgraph.graph.bipartite import normalized_bipartite, normalized_bipartite_adj
from mmgraph.nn.conv import LightGCNConv, LightGCNEncoder
from mmgraph.nn.sparse import SparseAdj, gather_rows, split_nodes, unique_rows


def _random_pairs(n_users=30, n_items=20, n=150, seed=0):
    rng = np.random.default_rng(seed)
    return np.unique(np.column_stack([rng.integers(0, n_users, n), rng.integers(0, n_items, n)]), axis=0)


def dense_norm_adj(pairs, n_users, n_items):
    n = n_users + n_items
    a = np.zeros((n, n))
    for u, i in pairs:
        a[u, n_users + i] = a[n_users + i, u] = 1.0
    d = a.sum(1)
    inv = np.where(d > 0, (d + 1e-7) ** -0.5, 0)
    return inv[:, None] * a * inv[None, :]


def test_normalized_bipartite_matches_dense_formula():
    pairs = _random_pairs()
    adj = normalized_bipartite_adj(pairs, 30, 20)
    dense = adj.csr.to_dense().numpy()
    np.testing.assert_allclose(dense, dense_norm_adj(pairs, 30, 20), atol=1e-6)
    np.testing.assert_allclose(dense, dense.T, atol=1e-7)


def test_duplicate_interactions_do_not_double_edges():
    pairs = _random_pairs()
    dup = np.concatenate([pairs, pairs[:10]])
    a = normalized_bipartite_adj(dup, 30, 20).csr.to_dense()
    b = normalized_bipartite_adj(pairs, 30, 20).csr.to_dense()
    assert torch.allclose(a, b)


@pytest.mark.parametrize("channels", [None, 3])
def test_csr_and_scatter_paths_identical(channels):
    pairs = _random_pairs()
    adj = normalized_bipartite_adj(pairs, 30, 20)
    edge_index, weight = normalized_bipartite(pairs, 30, 20)
    shape = (50, 8) if channels is None else (50, channels, 8)
    x1 = torch.randn(*shape, dtype=torch.float32, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    conv = LightGCNConv()
    y1 = conv(conv(x1, adj), adj)
    y2 = conv(conv(x2, edge_index, weight), edge_index, weight)
    assert y1.shape == shape
    torch.testing.assert_close(y1, y2, atol=1e-6, rtol=1e-5)
    g = torch.randn(shape)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-6, rtol=1e-5)


def test_gather_scatter_path_learns_edge_weights_and_normalises():
    pairs = _random_pairs()
    edge_index, _ = normalized_bipartite(pairs, 30, 20)
    w = torch.rand(edge_index.size(1), requires_grad=True)
    x = torch.randn(50, 4)
    conv = LightGCNConv(normalize=True)
    y = conv(x, edge_index, w)
    y.pow(2).sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    # reference: D^-1/2 W D^-1/2 x with weighted (in-)degrees; edge_index is PyG's source -> target
    dense = torch.zeros(50, 50)
    dense[edge_index[1], edge_index[0]] = w.detach()
    d = dense.sum(1) + 1e-7
    ref = d.pow(-0.5)[:, None] * dense * d.pow(-0.5)[None, :] @ x
    torch.testing.assert_close(y.detach(), ref, atol=1e-5, rtol=1e-5)
    # and PyG's own LGConv on the same directed, weighted graph
    from torch_geometric.nn import LGConv

    from mmgraph.nn.conv import remove_generated_source_at_exit
    lg_conv = LGConv(normalize=True)
    remove_generated_source_at_exit(LGConv)    # PyG's generated propagate module, as for LightGCNConv
    torch.testing.assert_close(y.detach(), lg_conv(x, edge_index, w.detach()), atol=1e-5, rtol=1e-5)


def test_normalize_on_a_directed_graph_equals_pygs_lgconv_and_keeps_gradients_finite():
    """A node without in-edges contributes nothing (PyG's gcn_norm), instead of a 1/sqrt(eps) weight; a zero-weight
    edge into such a node gives a finite gradient."""
    from torch_geometric.nn import LGConv

    from mmgraph.nn.conv import remove_generated_source_at_exit
    rng = np.random.default_rng(3)
    edge_index = torch.tensor(rng.integers(1, 12, (2, 40)))          # node 0 has no edge at all
    edge_index[:, :3] = torch.tensor([[0, 0, 2], [1, 2, 5]])        # node 0: out-edges only
    w = torch.rand(40, dtype=torch.float64)
    w[5] = 0.0
    x = torch.randn(12, 3, dtype=torch.float64)
    lg_conv = LGConv(normalize=True)
    remove_generated_source_at_exit(LGConv)
    torch.testing.assert_close(LightGCNConv(normalize=True)(x, edge_index, w), lg_conv(x, edge_index, w))
    edge_index[1, 5] = 0                                             # a zero-weight edge into node 0
    w.requires_grad_(True)
    LightGCNConv(normalize=True)(x, edge_index, w).sum().backward()
    assert torch.isfinite(w.grad).all()


def test_normalize_on_a_bipartite_edge_index_uses_each_sides_degrees():
    """``num_nodes`` = the targets: w / sqrt(out-degree of the source x in-degree of the target), the two sides
    numbered separately."""
    rng = np.random.default_rng(5)
    src, dst = torch.tensor(rng.integers(0, 7, 30)), torch.tensor(rng.integers(0, 4, 30))
    w = torch.rand(30, dtype=torch.float64)
    x = torch.randn(7, 2, dtype=torch.float64)
    dense = torch.zeros(4, 7, dtype=torch.float64).index_put_((dst, src), w, accumulate=True)
    d_t, d_s = dense.sum(1), dense.sum(0)
    inv = lambda d: torch.where(d > 0, d, torch.ones_like(d)).pow(-0.5) * (d > 0)   # noqa: E731
    ref = (inv(d_t)[:, None] * dense * inv(d_s)[None, :]) @ x
    got = LightGCNConv(normalize=True)(x, torch.stack([src, dst]), w, num_nodes=4)
    torch.testing.assert_close(got, ref)


def test_non_symmetric_sparse_backward_uses_transpose():
    rng = np.random.default_rng(1)
    rows, cols = rng.integers(0, 12, 40), rng.integers(0, 9, 40)
    w = torch.rand(40)
    adj = SparseAdj(torch.tensor(np.stack([rows, cols])), w, (12, 9))
    dense = torch.zeros(12, 9).index_put_((torch.tensor(rows), torch.tensor(cols)), w, accumulate=True)
    x1 = torch.randn(9, 5, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    g = torch.randn(12, 5)
    (adj.matmul(x1) * g).sum().backward()
    ((dense @ x2) * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-6, rtol=1e-5)


def test_sparse_adj_keeps_int32_indices_with_the_same_products(monkeypatch):
    """Every CSR a SparseAdj holds (A, A^T, a bipartite graph's blocks) has int32 indices (MKL takes them as they
    are), and its products and gradients equal those of the int64 matrix it was built from."""
    import mmgraph.nn.sparse as sparse

    rng = np.random.default_rng(2)
    rows, cols = rng.integers(0, 12, 40), rng.integers(0, 9, 40)
    ei, w = torch.tensor(np.stack([rows, cols])), torch.rand(40)
    adj = SparseAdj(ei, w, (12, 9))
    bip = normalized_bipartite_adj(_random_pairs(), 30, 20)
    for m in (adj.csr, adj.csr_t, SparseAdj.from_edges(ei, w, (12, 9)).csr, bip.csr, bip.block_ui, bip.block_iu):
        assert m.crow_indices().dtype == torch.int32 and m.col_indices().dtype == torch.int32
    assert adj.edge_index().dtype == torch.long
    monkeypatch.setattr(sparse, "INT32", False)
    wide = SparseAdj(ei, w, (12, 9))
    assert wide.csr.crow_indices().dtype == torch.long
    x = torch.randn(9, 5, requires_grad=True)
    g = torch.randn(12, 5)
    got = torch.autograd.grad((adj.matmul(x) * g).sum(), x)[0]
    torch.testing.assert_close(adj.matmul(x), wide.matmul(x), rtol=0, atol=0)
    torch.testing.assert_close(got, torch.autograd.grad((wide.matmul(x) * g).sum(), x)[0], rtol=0, atol=0)
    torch.testing.assert_close(adj.rows_matmul(x, torch.tensor([3, 0, 11]), power=1),
                               wide.rows_matmul(x, torch.tensor([3, 0, 11]), power=1))


def test_sparse_adj_from_edges_equals_the_coalesced_matrix():
    """The per-step build (one key sort per orientation) gives the products and gradients of the dense
    matrix, repeated pairs summed as the coalescing constructor sums them, and a valid CSR (sorted,
    distinct columns per row) with and without repeats."""
    rng = np.random.default_rng(4)
    rows, cols = rng.integers(0, 12, 60), rng.integers(0, 9, 60)
    rows[:5], cols[:5] = 3, 7                                   # a repeated pair
    w = torch.rand(60, dtype=torch.float64)
    ei = torch.tensor(np.stack([rows, cols]))
    distinct = np.unique(rows * 9 + cols, return_index=True)[1]
    no_repeats = SparseAdj.from_edges(ei[:, distinct], w[distinct], (12, 9))
    torch.testing.assert_close(no_repeats.csr.to_dense(), SparseAdj(ei[:, distinct], w[distinct], (12, 9)).csr.to_dense().double())
    adj = SparseAdj.from_edges(ei, w, (12, 9))
    assert adj.csr.dtype == torch.float64 and adj.csr.shape == (12, 9) and adj.csr_t.shape == (9, 12)
    dense = torch.zeros(12, 9, dtype=torch.float64).index_put_((ei[0], ei[1]), w, accumulate=True)
    torch.testing.assert_close(adj.csr.to_dense(), dense)
    torch.testing.assert_close(adj.csr_t.to_dense(), dense.t())
    for m in (adj.csr, adj.csr_t, no_repeats.csr, no_repeats.csr_t):   # torch's CSR invariants hold
        torch.sparse_csr_tensor(m.crow_indices(), m.col_indices(), m.values(), m.shape, check_invariants=True)
    x1 = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    g = torch.randn(12, 5, dtype=torch.float64)
    (adj.matmul(x1) * g).sum().backward()
    ((dense @ x2) * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    with pytest.raises(ValueError, match="edge_weight"):
        SparseAdj.from_edges(ei, w[:-1], (12, 9))


@pytest.mark.parametrize("readout", ["mean", "sum", "last"])
def test_encoder_readouts(readout):
    pairs = _random_pairs()
    adj = normalized_bipartite_adj(pairs, 30, 20)
    a = torch.tensor(dense_norm_adj(pairs, 30, 20), dtype=torch.float32)
    x = torch.randn(50, 6)
    hs = [x, a @ x, a @ a @ x, a @ a @ a @ x]
    expected = {"mean": sum(hs) / 4, "sum": sum(hs), "last": hs[-1]}[readout]
    out = LightGCNEncoder(3, readout)(x, adj)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("mean", [True, False])
@pytest.mark.parametrize("n_layers", [1, 3])
def test_power_sum_equals_dense_polynomial_values_and_gradients(symmetric, mean, n_layers):
    """``SparseAdj.power_sum`` (in-place forward, Horner backward) = sum_k A^k x (/ (L+1)) with dense
    matrices, gradients through A^T; and bit-identical to the layer-by-layer encoder it replaced."""
    rng = np.random.default_rng(3)
    n = 15
    rows, cols = rng.integers(0, n, 60), rng.integers(0, n, 60)
    if symmetric:
        rows, cols = np.concatenate([rows, cols]), np.concatenate([cols, rows])
    w = torch.rand(60).repeat(2 if symmetric else 1)
    adj = SparseAdj(torch.tensor(np.stack([rows, cols])), w, (n, n), symmetric=symmetric)
    dense = torch.zeros(n, n).index_put_((torch.tensor(rows), torch.tensor(cols)), w, accumulate=True)
    x = torch.randn(n, 4, dtype=torch.float32, requires_grad=True)
    g = torch.randn(n, 4)
    out = adj.power_sum(x, n_layers, mean)
    (out * g).sum().backward()
    xd = x.detach().clone().requires_grad_(True)
    hs = [xd]
    for _ in range(n_layers):
        hs.append(dense @ hs[-1])
    expected = sum(hs) / (n_layers + 1) if mean else sum(hs)
    (expected * g).sum().backward()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, xd.grad, atol=1e-5, rtol=1e-5)
    xl = x.detach().clone().requires_grad_(True)                      # the layer-by-layer autograd form
    total, cur = xl, xl
    for _ in range(n_layers):
        cur = adj.matmul(cur)
        total = total + cur
    total = total / (n_layers + 1) if mean else total
    (total * g).sum().backward()
    assert torch.equal(total, out) and torch.equal(xl.grad, x.grad)
    with torch.no_grad():
        assert torch.equal(adj.power_sum(x, n_layers, mean), out)


@pytest.mark.parametrize("readout", ["mean", "sum"])
@pytest.mark.parametrize("n_layers", [1, 3])
@pytest.mark.parametrize("used", ["both", "users", "items"])
def test_bipartite_propagation_equals_the_joint_table(readout, n_layers, used):
    """``LightGCNEncoder.bipartite`` on an ``interaction_adj``-style graph (blocks kept) gives bit for bit the
    joint ``[users; items]`` encoder's values and gradients (one table's output unused included); without the
    blocks it falls back to the joint path; a non-bipartite edge or a wrong user count is refused."""
    n_users, n_items = 30, 20
    pairs = _random_pairs(n_users, n_items)
    adj = normalized_bipartite_adj(pairs, n_users, n_items)
    assert adj.bipartite and adj.n_users == n_users
    enc = LightGCNEncoder(n_layers, readout)
    g = torch.Generator().manual_seed(n_layers)
    users = torch.randn(n_users, 4, generator=g, requires_grad=True)
    items = torch.randn(n_items, 4, generator=g, requires_grad=True)
    gu, gi = torch.randn(n_users, 4, generator=g), torch.randn(n_items, 4, generator=g)

    def loss(u, i):
        return (u * gu).sum() * (used != "items") + (i * gi).sum() * (used != "users")

    out = enc.bipartite(users, items, adj)
    grads = torch.autograd.grad(loss(*out), [users, items])
    ju, ji = users.detach().clone().requires_grad_(True), items.detach().clone().requires_grad_(True)
    joint = split_nodes(enc(torch.cat([ju, ji], 0), adj), n_users)
    joint_grads = torch.autograd.grad(loss(*joint), [ju, ji])
    for a, b in zip(out + grads, joint + joint_grads):
        assert torch.equal(a, b)
    u3, i3 = users.detach().view(n_users, 2, 2), items.detach().view(n_items, 2, 2)   # channel tables [N, C, d]
    for a, b in zip(enc.bipartite(u3, i3, adj), split_nodes(enc(torch.cat([u3, i3], 0), adj), n_users)):
        assert a.shape == b.shape and torch.equal(a, b)
    plain = SparseAdj.from_csr(adj.csr, symmetric=True)            # no blocks: the joint path, same values
    assert not plain.bipartite
    for a, b in zip(enc.bipartite(users, items, plain), out):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="users"):
        enc.bipartite(users[:-1], items, adj)
    with pytest.raises(ValueError, match="not bipartite"):
        SparseAdj(torch.tensor([[0, 1], [1, 0]]), None, (3, 3), symmetric=True, n_users=2)


def test_unique_rows_matches_indexing_values_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(50, 3, 4, requires_grad=True)
    idx = torch.unique(torch.randint(0, 50, (30,)))
    g = torch.randn(len(idx), 3, 4)
    (unique_rows(x, idx) * g).sum().backward()
    ref = x.detach().clone().requires_grad_()
    (ref[idx] * g).sum().backward()
    torch.testing.assert_close(unique_rows(x, idx), ref[idx])
    torch.testing.assert_close(x.grad, ref.grad)
    with torch.no_grad():
        assert not unique_rows(x, idx).requires_grad


@pytest.mark.parametrize("index_shape", [(40,), (8, 6)])
def test_gather_rows_matches_indexing_values_and_gradients(index_shape):
    """Repeated rows (40-48 draws from the first 10 of 30 rows), a 2-d index and trailing dims: the values and
    the gradient of plain indexing (the gradient up to the order repeated rows are summed in)."""
    torch.manual_seed(0)
    x = torch.randn(30, 3, 4, requires_grad=True)
    idx = torch.randint(0, 10, index_shape)
    assert len(torch.unique(idx)) < idx.numel()
    g = torch.randn(*index_shape, 3, 4)
    out = gather_rows(x, idx)
    ref = x.detach().clone().requires_grad_()
    assert out.shape == ref[idx].shape == (*index_shape, 3, 4)
    torch.testing.assert_close(out, ref[idx], rtol=0, atol=0)
    (out * g).sum().backward()
    (ref[idx] * g).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad)
    # rows never gathered get a zero gradient, not garbage
    unused = torch.ones(30, dtype=torch.bool)
    unused[idx.reshape(-1)] = False
    assert unused.sum() >= 20 and torch.count_nonzero(x.grad[unused]) == 0


@pytest.mark.parametrize("used", ["both", "users", "items"])
def test_split_nodes_matches_slicing_values_and_gradients(used):
    torch.manual_seed(0)
    x = torch.randn(17, 5, requires_grad=True)
    ref = x.detach().clone().requires_grad_()
    gu, gi = torch.randn(7, 5), torch.randn(10, 5)
    u, i = split_nodes(x * 2, 7)
    ru, ri = (ref * 2)[:7], (ref * 2)[7:]
    assert torch.equal(u, ru) and torch.equal(i, ri)
    pick = {"both": lambda a, b: (a * gu).sum() + (b * gi).sum(), "users": lambda a, b: (a * gu).sum(),
            "items": lambda a, b: (b * gi).sum()}[used]
    pick(u, i).backward()
    pick(ru, ri).backward()
    assert torch.equal(x.grad, ref.grad)


def test_row_normalize_equals_f_normalize_values_and_gradients():
    from mmgraph.nn import row_normalize
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    x[0, 1] = 0.0                      # a zero row
    x[1, 2] = 1e-14                    # a row below eps: clamped, a linear map
    x.requires_grad_()
    w = torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    got, ref = row_normalize(x), torch.nn.functional.normalize(x, dim=-1)
    torch.testing.assert_close(got, ref, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(torch.autograd.grad((got * w).sum(), x)[0], torch.autograd.grad((ref * w).sum(), x)[0],
                               rtol=1e-10, atol=1e-12)
    smooth = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(row_normalize, (smooth,))
    with torch.no_grad():                # no graph: the plain function
        torch.testing.assert_close(row_normalize(x), ref.detach())


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_keeps_each_entry_with_probability_1_minus_p_and_rescales(p):
    from mmgraph.nn.dropout import Dropout, dropout

    torch.manual_seed(0)
    x = torch.rand(400, 250).add_(0.5).requires_grad_()     # no zero entries: kept <=> nonzero output
    torch.manual_seed(1)
    y = dropout(x, p)
    kept = y != 0
    n = x.numel()
    # the keep rate is Binomial(n, 1 - p) / n: within 5 standard deviations
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * ((p * (1 - p) / n) ** 0.5)
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.float() / (1 - p))
    # seeded: the same mask again; eval mode, p = 0 and p = 1 as nn.Dropout
    torch.manual_seed(1)
    torch.testing.assert_close(dropout(x.detach(), p), y.detach())
    module = Dropout(p).eval()
    assert module(x) is x and dropout(x, 0.0) is x
    assert torch.count_nonzero(dropout(x, 1.0)) == 0
    with pytest.raises(ValueError, match="dropout probability"):
        dropout(x, 1.5)


def test_pygs_generated_propagate_file_is_removed_when_the_process_exits(tmp_path):
    # PyG writes LightGCNConv's generated propagate module to the temporary folder and never deletes it; the
    # process that built the layer removes it at exit, and it is there while the process runs
    import os
    import subprocess
    import sys
    from pathlib import Path
    code = ("import os, sys\n"
            "from mmgraph.nn.conv import LightGCNConv\n"
            "LightGCNConv(); LightGCNConv()\n"
            "path = sys.modules['mmgraph.nn.conv_LightGCNConv_propagate'].__file__\n"
            "assert os.path.exists(path)\n"
            "print(path)\n")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    path = out.stdout.strip().splitlines()[-1]
    assert Path(path).parent == tmp_path and not Path(path).exists()
    assert not list(tmp_path.glob("*propagate*"))
