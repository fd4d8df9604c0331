"""Exact and FAISS top-K retrieval with excluded (training) items."""
import numpy as np
import pytest
import torch

from mmgraph.evaluation import topk_exact, topk_faiss
from mmgraph.evaluation.retrieval import gather_csr_rows


def random_csr(n_rows, n_cols, max_len, rng):
    lens = rng.integers(0, max_len + 1, n_rows)
    lens[0] = max_len  # one long history: the bucketing must not over-fetch wrongly
    indices = np.concatenate([np.sort(rng.choice(n_cols, n, replace=False)) for n in lens])
    indptr = np.concatenate([[0], np.cumsum(lens)])
    return indptr.astype(np.int64), indices.astype(np.int64)


def brute_topk(users, items, k, csr):
    scores = users @ items.T
    if csr is not None:
        for u in range(len(users)):
            scores[u, csr[1][csr[0][u]:csr[0][u + 1]]] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


@pytest.mark.parametrize("with_csr", [False, True])
def test_faiss_equals_exact_equals_bruteforce(with_csr):
    rng = np.random.default_rng(0)
    users = rng.standard_normal((300, 16)).astype(np.float32)
    items = rng.standard_normal((500, 16)).astype(np.float32)
    csr = random_csr(300, 500, 120, rng) if with_csr else None
    k = 20
    s_ref, i_ref = brute_topk(users, items, k, csr)
    s_ex, i_ex = topk_exact(torch.from_numpy(users), torch.from_numpy(items), k, csr, batch_size=37)
    s_fa, i_fa = topk_faiss(users, items, k, csr)
    assert np.array_equal(i_ex.numpy(), i_ref) and np.array_equal(i_fa.numpy(), i_ref)
    np.testing.assert_allclose(s_ex.numpy(), s_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s_fa.numpy(), s_ref, rtol=1e-5, atol=1e-5)
    if csr is not None:
        for u in range(300):
            assert not set(i_fa[u].tolist()) & set(csr[1][csr[0][u]:csr[0][u + 1]].tolist())


def test_fewer_items_than_k_are_padded():
    rng = np.random.default_rng(1)
    users = rng.standard_normal((3, 4)).astype(np.float32)
    items = rng.standard_normal((6, 4)).astype(np.float32)
    csr = (np.array([0, 4, 4, 6]), np.array([0, 1, 2, 3, 4, 5]))
    for fn in (topk_exact, topk_faiss):
        s, i = fn(users, items, 5, csr)
        assert i.shape == (3, 5)
        assert i[0, 2:].tolist() == [-1, -1, -1] and torch.isneginf(s[0, 2:]).all()
        assert (i[1] >= 0).all()
        assert i[2, 4].item() == -1 and set(i[2, :4].tolist()) == {0, 1, 2, 3}


def test_gather_csr_rows():
    indptr = torch.tensor([0, 2, 2, 5, 6])
    indices = torch.tensor([1, 4, 0, 2, 3, 7])
    r, c = gather_csr_rows(indptr, indices, torch.tensor([3, 1, 0, 2]))
    assert r.tolist() == [0, 2, 2, 3, 3, 3] and c.tolist() == [7, 1, 4, 0, 2, 3]
    r, c = gather_csr_rows(indptr, indices, torch.tensor([1]))
    assert len(r) == 0 and len(c) == 0


@pytest.mark.parametrize("n", [1000, 25_037])  # narrow: plain topk; wide: two-stage with ragged tail
def test_topk_rows_equals_torch_topk(n):
    from mmgraph.evaluation.retrieval import topk_rows
    g = torch.Generator().manual_seed(n)
    scores = torch.randn(40, n, generator=g)
    scores[:, torch.randperm(n, generator=g)[: n // 3]] = float("-inf")
    scores[0, -5:] = 100.0 + torch.arange(5.0)  # best items in the ragged tail (no ties)
    scores[1, :60] = 50.0 + torch.arange(60.0)  # many top items in the same block
    for k in (1, 20, 50):
        v, i = topk_rows(scores, k)
        rv, ri = torch.topk(scores, k, dim=1)
        assert torch.equal(v, rv) and torch.equal(i, ri)
        # leading dimensions are rows (DA-MRS ranks [views, rows, items] blocks)
        v3, i3 = topk_rows(scores.view(4, 10, n), k)
        assert v3.shape == (4, 10, k) and torch.equal(v3.reshape(40, k), rv) and torch.equal(i3.reshape(40, k), ri)
    assert topk_rows(scores.view(4, 10, n), 0)[1].shape == (4, 10, 0)


def test_recommend_refuses_raw_ids_out_of_range_indices_and_unknown_backends():
    """Raw-id strings were cast to indices (other users' lists, no error) and an unknown backend ran exact."""
    from mmgraph.data import make_synthetic
    from mmgraph.errors import DataError
    from mmgraph.evaluation import recommend, resolve_users
    ds = make_synthetic(n_users=40, n_items=30, seed=0)
    u, i = torch.randn(40, 4), torch.randn(30, 4)
    with pytest.raises(DataError, match="expected user indices 0..39 .* strings such as '1'.*resolve_users"):
        recommend(u, i, ds, k=2, users=["1", "2"])
    with pytest.raises(DataError, match="index 40 is out of range"):
        recommend(u, i, ds, k=2, users=[3, 40])
    with pytest.raises(DataError, match="backend must be 'exact' or 'faiss', got 'bogus'"):
        recommend(u, i, ds, k=2, backend="bogus")
    table = recommend(u, i, ds, k=2, users=resolve_users(ds, ["3", "4"]))
    assert list(table.user_id.astype(str).unique()) == ["3", "4"] and len(table) == 4
