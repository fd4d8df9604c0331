"""DRAGON (learning and plug-ins: tests/test_baselines.py): its item graph is the brute-force kNN graph, and its
forward and loss match brute force (the user graph is DualGNN's, checked in test_baselines_dualgnn.py)."""
import torch
import torch.nn.functional as F

from mmgraph.train import build_model
from tests.helpers import random_batch as _batch
from tests.test_baselines_dualgnn import _dense_sym, _dense_user_softmax


def _dense_knn_sym(x: torch.Tensor, k: int) -> torch.Tensor:
    """MMRec's get_knn_adj_mat + compute_normalized_laplacian, dense."""
    xn = x / x.norm(dim=1, keepdim=True)
    idx = (xn @ xn.t()).topk(k, dim=1).indices
    a = torch.zeros(x.shape[0], x.shape[0]).scatter_(1, idx, 1.0)
    d = (a.sum(1) + 1e-7).rsqrt()
    return d[:, None] * a * d[None, :]


def test_dragon_forward_matches_brute_force(tiny):
    torch.manual_seed(0)
    model = build_model("dragon", tiny, {"graph_cache": False, "user_knn_k": 4, "knn_k": 3})
    U = tiny.n_users
    feats = {m: torch.as_tensor(f) for m, f in tiny.features.items()}
    s_item = 0.1 * _dense_knn_sym(feats["image"], 3) + 0.9 * _dense_knn_sym(feats["text"], 3)
    torch.testing.assert_close(model.item_graph.csr.to_dense(), s_item)
    a, s_user = _dense_sym(tiny), _dense_user_softmax(tiny, 4)
    reps = []
    for m in model.modalities:
        b = model.branches[m]
        x = F.normalize(torch.cat([b.preference, b.mlp_1(F.leaky_relu(b.mlp(model.features.raw(m))))]))
        reps.append(x + a @ x + a @ a @ x)
    users = torch.cat([model.weight_u[:, k:k + 1] * r[:U] for k, r in enumerate(reps)], 1)
    items = torch.cat([r[U:] for r in reps], 1)
    got_u, got_i = model.embeddings()
    torch.testing.assert_close(got_u, users + s_user @ users, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_i, items + s_item @ items, atol=1e-5, rtol=1e-5)


def test_dragon_loss_is_mmrec_log2_bpr_plus_reg(tiny):
    torch.manual_seed(0)
    model = build_model("dragon", tiny, {"reg_weight": 0.01, "graph_cache": False})
    batch = _batch(tiny)
    out = model.loss(batch)
    eu = out.user_emb[batch.users]
    diff = (eu * out.item_emb[batch.pos]).sum(1) - (eu * out.item_emb[batch.neg]).sum(1)
    bpr = -torch.log2(torch.sigmoid(diff)).mean()
    reg = sum((model.branches[m].preference[batch.users] ** 2).mean() for m in model.modalities)
    torch.testing.assert_close(out.loss, bpr + 0.01 * (reg + (model.weight_u ** 2).mean()), atol=1e-5, rtol=1e-5)

