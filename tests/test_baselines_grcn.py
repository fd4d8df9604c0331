"""GRCN (learning and plug-ins: tests/test_baselines.py): its attention, routing, refined edges and loss match brute
force."""
import pytest
import torch
import torch.nn.functional as F

from mmgraph.models.grcn import edge_attention
from mmgraph.train import build_model
from tests.helpers import mmrec_interleaved_bpr, random_batch as _batch


def test_edge_attention_is_a_softmax_over_each_targets_edges():
    torch.manual_seed(0)
    x = torch.randn(6, 4)
    ei = torch.tensor([[0, 1, 2, 3, 4, 0], [5, 5, 5, 4, 3, 4]])
    alpha = edge_attention(x, ei, 6)
    for e in range(ei.shape[1]):
        same = (ei[1] == ei[1, e]).nonzero().flatten()
        logits = torch.stack([x[ei[0, f]] @ x[ei[1, f]] for f in same])
        ref = torch.softmax(logits, 0)[(same == e).nonzero().item()]
        torch.testing.assert_close(alpha[e], ref)


def _brute_content(model, m, n_users, pairs, user_routing):
    layer = model.content[m]
    f = F.normalize(F.leaky_relu(layer.mlp(model.features.raw(m))))
    p = F.normalize(layer.preference)
    items_of = {u: [i for uu, i in pairs if uu == u] for u in range(n_users)}
    for _ in range(layer.n_routing):
        if user_routing:
            new = p.clone()
            for u, its in items_of.items():
                if its:
                    a = torch.softmax(torch.stack([p[u] @ f[i] for i in its]), 0)
                    new[u] = p[u] + sum(a[k] * f[i] for k, i in enumerate(its))
            p = new
        p = F.normalize(p)
    x = torch.cat([p, f])
    n = x.shape[0]
    nbrs = {v: [] for v in range(n)}
    for u, i in pairs:
        nbrs[u].append(n_users + i)
        nbrs[n_users + i].append(u)
    att = {}
    out = x.clone()
    for v, ns in nbrs.items():
        if ns:
            a = torch.softmax(torch.stack([x[v] @ x[j] for j in ns]), 0)
            for k, j in enumerate(ns):
                att[(j, v)] = a[k]
                out[v] = out[v] + a[k] * x[j]
    return out, att


@pytest.mark.parametrize("user_routing", [True, False])
def test_grcn_forward_matches_brute_force(tiny, user_routing):
    torch.manual_seed(0)
    model = build_model("grcn", tiny, {"user_routing": user_routing, "n_layers": 2, "graph_cache": False})
    U = tiny.n_users
    pairs = [tuple(map(int, r)) for r in sorted({tuple(r) for r in tiny.train.tolist()})]
    parts = model.parts()
    atts = {}
    for k, m in enumerate(model.modalities):
        ref, atts[m] = _brute_content(model, m, U, pairs, user_routing)
        torch.testing.assert_close(parts[m], ref, atol=1e-5, rtol=1e-5)
    # refined edge weights: relu(max_m alpha^m_{j->v} * confidence[j, m]); ID branch x + A x + A^2 x
    n = U + tiny.n_items
    a = torch.zeros(n, n)
    for (j, v) in atts[model.modalities[0]]:
        w = max(atts[m][(j, v)] * model.confidence[j, k] for k, m in enumerate(model.modalities))
        a[v, j] = torch.relu(w)
    x = F.normalize(model.id_emb)
    torch.testing.assert_close(parts["id"], x + a @ x + a @ a @ x, atol=1e-5, rtol=1e-5)
    # the score is the sum of the channel scores; routing off leaves preferences merely normalised
    users, items = model.embeddings()
    chans = model.channel_embeddings()
    total = sum(chans[c][0][:3] @ chans[c][1][:4].t() for c in ["id", *model.modalities])
    torch.testing.assert_close(users[:3] @ items[:4].t(), total, atol=1e-5, rtol=1e-5)


def test_grcn_loss_is_mmrec_bpr_plus_reg(tiny):
    torch.manual_seed(0)
    model = build_model("grcn", tiny, {"reg_weight": 0.1, "graph_cache": False})
    batch = _batch(tiny)
    out = model.loss(batch)
    U = tiny.n_users
    bpr, user_tensor, item_tensor = mmrec_interleaved_bpr(out, batch, U)
    reg = (model.id_emb[user_tensor] ** 2 + model.id_emb[item_tensor] ** 2).mean()
    reg = reg + (model.content["image"].preference ** 2).mean()
    for m in model.modalities:
        reg = reg + (model.content[m].preference[user_tensor] ** 2).mean()
    torch.testing.assert_close(out.loss, bpr + 0.1 * reg, atol=1e-5, rtol=1e-5)


def _gather_parts(model):
    """GRCN's parts through the plain gather / scatter path (edge_attention on an edge_index and a
    LightGCNConv message pass): the reference for the EdgeGraph path's values and gradients."""
    from mmgraph.nn.conv import LightGCNConv
    conv, ei, U = LightGCNConv(), model.edge_index, model.n_users
    n = U + model.n_items
    out, alphas = {}, []
    for m in model.modalities:
        layer = model.content[m]
        content = F.normalize(F.leaky_relu(layer.mlp(model.features.raw(m))))
        pref = F.normalize(layer.preference)
        to_users = ei[:, ei.shape[1] // 2:]
        for _ in range(layer.n_routing):
            if layer.user_routing:
                x = torch.cat([pref, content])
                pref = pref + conv(x, to_users, edge_attention(x, to_users, n), num_nodes=n)[:U]
            pref = F.normalize(pref)
        x = torch.cat([pref, content])
        alpha = edge_attention(x, ei, n)
        out[m] = x + conv(x, ei, alpha, num_nodes=n)
        alphas.append(alpha)
    weight = (torch.stack(alphas, 1) * model.confidence[ei[0]]).max(1).values.relu()
    x = F.normalize(model.id_emb)
    h1 = conv(x, ei, weight, num_nodes=n)
    return {"id": x + h1 + conv(h1, ei, weight, num_nodes=n), **out}


@pytest.mark.parametrize("user_routing", [True, False])
def test_grcn_edge_graph_path_equals_gather_path_with_gradients(tiny, user_routing):
    torch.manual_seed(1)
    model = build_model("grcn", tiny, {"user_routing": user_routing, "n_layers": 2, "graph_cache": False}).double()
    params = [p for p in model.parameters() if p.requires_grad]
    got, ref = model.parts(), _gather_parts(model)
    weights = {k: torch.randn_like(v) for k, v in ref.items()}
    for k in ref:
        torch.testing.assert_close(got[k], ref[k])
    g_got = torch.autograd.grad(sum((got[k] * w).sum() for k, w in weights.items()), params)
    g_ref = torch.autograd.grad(sum((ref[k] * w).sum() for k, w in weights.items()), params)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b)
