"""DA-MRS (Xu et al., KDD 2024): denoising multimodal item graphs and user feedback, aligning the views,
as MMRec's ``models/damrs.py``.

* **Views.** LightGCN (mean, ``n_ui_layers``) on ID embeddings gives users ``u`` and items ``e_i``. Item
  views ``h_v = S_v^(n_mm_layers) E_item``: one per modality over its denoised kNN graph (relation kind
  ``damrs``, :mod:`mmgraph.graph.denoised`) and a *behaviour* view over the item co-occurrence graph (items
  sharing at least ``session_min_count`` training users, the ``session_k`` most shared per item, relation
  ``cooccurrence`` with ``measure: count``; plus self loops, binary weights, ``1 / sqrt(d_i d_j)`` by row
  degrees). Score ``u . (e_i + mean_v h_v)``.
* **Neighbour discrimination** (denoising the item graphs): for the batch's distinct items and each view
  ``a``, ``P_v = softmax_j(cos(h_v[i], h_v[j]))`` over all items; pseudo-positives ``top10(sum_{b != a} P_b +
  2 P_a)`` and, of ``P_a`` without those, another ``top10``; loss ``-log(sum_pos1 exp(c/T) / sum_all exp(c/T))
  - log(sum_pos2 exp(c/T) / (sum_all - sum_pos1))`` with ``c`` the cosines in view ``a``, ``T = 0.2``,
  averaged over the views.
* **KL alignment**: for the batch's distinct users and items, ``p_g = sigmoid(u . norm(e_i))``,
  ``p_t = sigmoid(u . norm(mean_v h_v[i]))``; ``mean(KL(p_g || p_t) + KL(p_t || p_g))`` (Bernoulli KLs).
* **Denoised BPR** (user feedback): per row, ``s_v = sigmoid(u . norm(h_v[i+]))`` over the views; weights
  (no gradient) ``w+ = clamp(mean_v s_v * exp(-Var_v s_v)^2, 0, 1)`` and, when ``mean_v s_v`` is below the
  batch mean of the negatives' ``s``, ``w- = clamp(max_v s_v - that mean, 0, 1)`` (else 0);
  ``-mean(w+ log sigmoid(s+ - s-) + w- log sigmoid(s- - s+))``.

``L = BPR + neighbor_weight * ND + kl_weight * KL``. The Bernoulli probabilities of the KL are clamped to
``[1e-7, 1 - 1e-7]`` (MMRec takes ``log`` of a saturated sigmoid, a NaN). The co-occurrence graph is our
reading of MMRec's ``item_graph_dict_2.npy``, which its preprocessing does not ship.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mmgraph.evaluation.retrieval import topk_rows
from mmgraph.graph.relations import Relation, relation_adj, relation_graph
from mmgraph.models.base import Batch, Channel, GraphRecommender, LossOutput, item_features
from mmgraph.models.registry import register
from mmgraph.nn.conv import LightGCNEncoder
from mmgraph.nn.sparse import SparseAdj, unique_rows

SESSION = "session"
SESSION_GRAPH = "cocount_items"
N_PSEUDO = 10
TEMPERATURE = 0.2
ND_EPS = 1e-9
KL_EPS = 1e-7


def modality_graph_name(m: str) -> str:
    return f"damrs_{m}"


def session_adj(data, name: str = SESSION_GRAPH) -> SparseAdj:
    """The co-occurrence neighbours plus self loops, binary, ``1 / sqrt(d_i d_j)`` with row degrees ``d``."""
    g = relation_graph(data, name, "item")
    n = g.num_nodes
    loops = torch.arange(n)
    rows, cols = torch.cat([loops, g.row]), torch.cat([loops, g.col])
    deg = torch.bincount(rows, minlength=n).float()
    inv = deg.rsqrt()
    return SparseAdj(torch.stack([rows, cols]), inv[rows] * inv[cols], (n, n))


#: rows of the batch's items per block of :func:`discrimination_loss` (three ``[V, 128, I]`` buffers, ~10 MB each
#: on TikTok, reused by every block)
ND_BLOCK = 128


def _discrimination_block(rows: Tensor, all_t: Tensor, n_pseudo: int, inv_t: float, weight: float,
                          buffers: Tuple[Tensor, Tensor, Tensor, Tensor]) -> Tuple[Tensor, Tensor]:
    """``(loss, dL/dcos [V, b, I])`` of one block ``rows [V, b, d]`` against ``all_t [V, d, I]`` (the unit rows
    of all items, transposed), each row's loss scaled by ``weight``. The returned gradient lives in a buffer."""
    n_views, b, n_items = rows.shape[0], rows.shape[1], all_t.shape[2]
    cos, exps, rank = (buf[: n_views * b * n_items].view(n_views, b, n_items) for buf in buffers[:3])
    total = buffers[3][: b * n_items].view(b, n_items)
    torch.bmm(rows, all_t, out=cos)
    torch.mul(cos, inv_t, out=exps).exp_()                      # exp(c / T), the InfoNCE's terms
    probs = cos.exp_()                                          # softmax over the items (|c| <= 1: no max shift)
    probs.div_(probs.sum(-1, keepdim=True))
    torch.add(probs, torch.sum(probs, 0, out=total), out=rank)  # sum_{v != a} P_v + 2 P_a
    # top-k by the two-stage block search (the same items; ~20 % faster than torch.topk on [V b, I] rows)
    mm_pos = topk_rows(rank, n_pseudo)[1]                       # [V, b, n]
    single_pos = topk_rows(probs.scatter_(-1, mm_pos, 0.0), n_pseudo)[1]
    e_mm, e_single = exps.gather(-1, mm_pos), exps.gather(-1, single_pos)
    mm, single, tot = e_mm.sum(-1), e_single.sum(-1), exps.sum(-1)          # [V, b]
    rest = tot - mm
    r1, r2 = mm / tot, single / rest
    loss = (-(r1 + ND_EPS).log() - (r2 + ND_EPS).log()).sum() * weight
    # d loss / d exp_j = g_tot + [j in mm_pos] g_mm + [j in single_pos] g_single; d exp_j / d c_j = exp_j / T
    g_single = -1.0 / ((r2 + ND_EPS) * rest)
    g_tot = r1 / ((r1 + ND_EPS) * tot) - r2 * g_single
    g_mm = -1.0 / ((r1 + ND_EPS) * tot) + r2 * g_single
    scale = weight * inv_t
    grad = exps.mul_((g_tot * scale).unsqueeze(-1))
    grad.scatter_add_(-1, mm_pos, e_mm * (g_mm * scale).unsqueeze(-1))
    grad.scatter_add_(-1, single_pos, e_single * (g_single * scale).unsqueeze(-1))
    return loss, grad


class _Discrimination(torch.autograd.Function):
    """The neighbour-discrimination loss of all views, by blocks of rows, with its gradient taken analytically
    in the forward (the pseudo-positives are constants): no ``[V, n, I]`` buffer, and the block buffers are
    reused (autograd's per-op ``[V, b, I]`` temporaries and extra passes cost more than the arithmetic: 1.5x
    slower); backward scales the saved gradients."""

    @staticmethod
    def forward(ctx, nb: Tensor, nv: Tensor, n_pseudo: int, temperature: float, block: int) -> Tensor:  # type: ignore[override]
        n_views, n, n_items = nb.shape[0], nb.shape[1], nv.shape[1]
        inv_t, weight = 1.0 / temperature, 1.0 / (n * n_views)
        all_t = nv.transpose(1, 2).contiguous()
        b = min(block, n)
        buffers = tuple(nb.new_empty(n_views * b * n_items) for _ in range(3)) + (nb.new_empty(b * n_items),)
        loss = nb.new_zeros(())
        grad_nb, grad_nv = torch.empty_like(nb), torch.zeros_like(nv)
        for lo in range(0, n, block):
            rows = nb[:, lo:lo + block]
            part, grad_cos = _discrimination_block(rows, all_t, n_pseudo, inv_t, weight, buffers)
            grad_nb[:, lo:lo + block] = torch.bmm(grad_cos, nv)
            grad_nv.baddbmm_(grad_cos.transpose(1, 2), rows)
            loss += part
        ctx.save_for_backward(grad_nb, grad_nv)
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad_nb, grad_nv = ctx.saved_tensors
        return grad_nb * grad, grad_nv * grad, None, None, None


def discrimination_loss(nb: Tensor, nv: Tensor, n_pseudo: int = N_PSEUDO, temperature: float = TEMPERATURE,
                        block: int = ND_BLOCK) -> Tensor:
    """DA-MRS's neighbour discrimination averaged over the views and the batch's items: for view ``a``, the
    unit rows ``nb[a] [n, d]`` against the unit rows of all items ``nv[a] [I, d]``: pseudo-positives ``P1`` = the
    top-``n_pseudo`` of ``sum_{v != a} P_v + 2 P_a`` (``P_v`` the softmax of view ``v``'s cosines over the items),
    ``P2`` = the top-``n_pseudo`` of ``P_a`` outside ``P1``; with ``e_j = exp(cos_j / T)``, the row's loss is
    ``-log(sum_P1 e / sum e + 1e-9) - log(sum_P2 e / (sum e - sum_P1 e) + 1e-9)``. Blocks of ``block`` rows; the
    same value and gradients as the whole-batch form."""
    return _Discrimination.apply(nb, nv, int(n_pseudo), float(temperature), int(block))


def bernoulli_kl(p: Tensor, q: Tensor) -> Tensor:
    return p * (p.log() - q.log()) + (1 - p) * ((1 - p).log() - (1 - q).log())


def symmetric_bernoulli_kl(a: Tensor, b: Tensor, eps: float = KL_EPS) -> Tensor:
    """``KL(p || q) + KL(q || p)`` of ``p = clamp(sigmoid(a), eps, 1 - eps)`` and ``q`` likewise of ``b``,
    elementwise, as ``(p - q) (logit p - logit q)`` (the two KLs' sum, exactly) with ``logit p`` = ``a`` clamped
    to ``+-logit(1 - eps)``: a few passes over the ``[users, items]`` score blocks instead of a dozen logs and
    products (and no ``log(1 - p)`` of a rounded ``p``)."""
    bound = math.log((1.0 - eps) / eps)
    a, b = a.clamp(-bound, bound), b.clamp(-bound, bound)
    return (torch.sigmoid(a) - torch.sigmoid(b)) * (a - b)


@torch.no_grad()
def feedback_weights(users: Tensor, pos_views: Tensor, neg_views: Tensor) -> Tuple[Tensor, Tensor]:
    """``(w+ [B], w- [B])`` from ``users [B, d]`` and the views' positive / negative item rows ``[V, B, d]``."""
    p = torch.sigmoid((users.unsqueeze(0) * F.normalize(pos_views, dim=-1)).sum(-1))   # [V, B]
    q = torch.sigmoid((users.unsqueeze(0) * F.normalize(neg_views, dim=-1)).sum(-1))
    p_mean, p_var, p_max = p.mean(0), p.var(0), p.max(0).values
    n_mean = q.mean()
    w_pos = (p_mean * torch.exp(-p_var).pow(2)).clamp(0, 1)
    w_neg = ((p_max - n_mean) * (p_mean < n_mean).float()).clamp(0, 1)
    return w_pos, w_neg


@register("damrs")
class DAMRS(GraphRecommender):
    """LightGCN plus item views over denoised modality kNN graphs and a co-occurrence graph; denoised
    (re-weighted) BPR, neighbour discrimination between the views and a KL alignment of the ID and view
    scores. Channels: one per view (``<modality>``, ``session``): ``u . h_v``."""

    multimodal = True
    defaults = {"embedding_size": 64, "n_ui_layers": 2, "n_mm_layers": 1, "knn_k": 10, "kl_weight": 1.0,
                "neighbor_weight": 0.001, "session_k": 200, "session_min_count": 2}

    @classmethod
    def relations(cls, config, modalities: Sequence[str]) -> List[Relation]:
        cfg = {**cls.defaults, **config}
        rels = [Relation(modality_graph_name(m), "damrs", {"modality": m, "k": int(cfg["knn_k"])}) for m in modalities]
        rels.append(Relation(SESSION_GRAPH, "cooccurrence", {"k": int(cfg["session_k"]), "measure": "count",
                                                             "min_count": int(cfg["session_min_count"])}))
        return rels

    def __init__(self, data, config=None):
        super().__init__(data, config)
        cfg = self.config
        self.encoder = LightGCNEncoder(int(cfg["n_ui_layers"]), "mean")
        self.view_names: List[str] = list(item_features(data)) + [SESSION]
        self.view_adj = torch.nn.ModuleDict({m: relation_adj(data, modality_graph_name(m))
                                             for m in self.view_names[:-1]})
        self.view_adj[SESSION] = session_adj(data)
        self.view_encoder = LightGCNEncoder(int(cfg["n_mm_layers"]), "last")

    def views(self) -> Tensor:
        """``[V, I, d]``: the item ID embeddings propagated over each view's graph."""
        e = self.item_emb.weight
        return torch.stack([self.view_encoder(e, self.view_adj[v]) for v in self.view_names])

    def forward(self) -> Tuple[Tensor, Tensor]:
        u, i = self.propagate()
        return u, i + self.views().mean(0)

    def loss(self, batch: Batch) -> LossOutput:
        users, items = self.propagate()
        views = self.views()                                      # [V, I, d]
        fused = views.mean(0)
        uid = torch.unique(batch.users)
        iid = torch.unique(torch.cat([batch.pos, batch.neg]))
        # neighbour discrimination over the batch's distinct items: one [n, I] cosine matrix per view serves
        # both the pseudo-labels (softmax, no gradient) and the InfoNCE
        nv = F.normalize(views, dim=-1)
        nd = discrimination_loss(nv[:, iid], nv, min(N_PSEUDO, self.n_items // 2))
        # KL alignment of the ID and the views' scores
        ub = unique_rows(users, uid)
        kl = symmetric_bernoulli_kl(ub @ F.normalize(unique_rows(items, iid), dim=-1).t(),
                                    ub @ F.normalize(unique_rows(fused, iid), dim=-1).t()).mean()
        # denoised BPR
        item_all = items + fused
        eu, ep, en = batch.rows(users, item_all)
        w_pos, w_neg = feedback_weights(eu, views[:, batch.pos], views[:, batch.neg])
        diff = (eu * ep).sum(-1) - (eu * en).sum(-1)
        bpr = -(F.logsigmoid(diff) * w_pos + F.logsigmoid(-diff) * w_neg).mean()
        total = bpr + float(self.config["neighbor_weight"]) * nd + float(self.config["kl_weight"]) * kl
        channels = {v: Channel(users=users, items=views[k]) for k, v in enumerate(self.view_names)}
        return LossOutput(total, {"bpr": bpr, "nd": nd, "kl": kl}, users, item_all, channels=channels)

    def _channels(self) -> Dict[str, Tuple[Tensor, Tensor]]:
        users = self.propagate()[0]
        views = self.views()
        return {v: (users, views[k]) for k, v in enumerate(self.view_names)}
