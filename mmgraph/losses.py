"""Loss functions shared by all models. Every function documents its input shapes.

Conventions follow MMRec where the published numbers depend on them (e.g. :func:`emb_reg`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bpr_loss", "emb_reg", "l2_reg", "alignment", "uniformity", "info_nce", "clamped_cosine",
           "calibrated_uniformity", "weighted_logsumexp", "lse_block_rows", "soft_cross_entropy", "unit_info_nce",
           "paired_info_nce", "info_nce_counts", "batch_info_nce"]


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor, eps: float = 1e-10) -> Tensor:
    """``-mean log(sigmoid(s+ - s-))`` for scores ``[B]`` (MMRec adds ``eps`` inside the log)."""
    return -torch.log(eps + torch.sigmoid(pos_scores - neg_scores)).mean()


def emb_reg(*embeddings: Tensor, batch_size: int | None = None) -> Tensor:
    """MMRec's ``EmbLoss``: sum of the Frobenius norms (NOT squared) of each matrix, divided by the
    number of rows of the LAST one (``B`` for batch rows; the item count for BM3's whole tables).

    ``embeddings``: tensors of any shape (typically ``[B, d]`` batch rows); returns a scalar."""
    b = batch_size if batch_size is not None else embeddings[-1].shape[0]
    return sum(torch.linalg.vector_norm(e) for e in embeddings) / b


def l2_reg(*embeddings: Tensor, batch_size: int | None = None) -> Tensor:
    """Squared L2 norm ``sum ||e||^2 / 2 / B`` (the convention of AnchorRec and many PyTorch codes).

    ``embeddings``: tensors of any shape, ``B`` = ``batch_size`` or the FIRST one's rows; returns a scalar."""
    b = batch_size if batch_size is not None else embeddings[0].shape[0]
    return sum(e.pow(2).sum() for e in embeddings) / 2 / b


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """``mean ||x_k - y_k||^alpha`` over rows of L2-normalised ``x, y [B, d]`` (DirectAU)."""
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def uniformity(x: Tensor, t: float = 2.0) -> Tensor:
    """``log mean_{a<b} exp(-t ||x_a - x_b||^2)`` over the rows of ``x [n, d]`` (Wang & Isola).

    Computed from the Gram matrix (:func:`calibrated_uniformity` with ``s = 1``: half the pairs' logits, one
    product for the backward), not from ``torch.pdist``, whose backward over the ``n (n - 1) / 2`` pairs is
    ~4x slower on a CPU (forward + backward, ``n = 1900``, ``d = 64``: 9 vs 38 ms); the same value up to
    float rounding."""
    return calibrated_uniformity(x, None, t)


def info_nce(anchor: Tensor, positive: Tensor, temperature: float | Tensor = 0.2,
             normalize: bool = True) -> Tensor:
    """In-batch InfoNCE: row ``k`` of ``anchor [B, d]`` must pick row ``k`` of ``positive [B, d]``
    among all rows of ``positive``; ``mean_k -log softmax(anchor_k . positive / tau)_k``."""
    if anchor.shape != positive.shape:
        raise ValueError(f"info_nce: anchor {tuple(anchor.shape)} and positive {tuple(positive.shape)} must have the "
                         f"same shape [B, d] (row k of one is the positive of row k of the other)")
    if normalize:
        anchor = F.normalize(anchor, dim=-1)
        positive = F.normalize(positive, dim=-1)
    logits = anchor @ positive.t() / temperature
    labels = torch.arange(anchor.shape[0], device=anchor.device)
    return F.cross_entropy(logits, labels)


def clamped_cosine(x: Tensor, y: Optional[Tensor] = None, min_sim: float = 0.0,
                   max_sim: float = 1.0) -> Tensor:
    """``clamp(cos(x_a, y_b), min_sim, max_sim)`` for rows of ``x [n, d]`` and ``y [m, d]`` (default
    ``y = x``) as ``[n, m]``: CM3's item similarity ``s`` (paper eq. 10, on the fused features)."""
    xn = F.normalize(x, dim=-1)
    yn = xn if y is None else F.normalize(y, dim=-1)
    return (xn @ yn.t()).clamp(min_sim, max_sim)


def calibrated_uniformity(x: Tensor, sim: Optional[Tensor] = None, t: float = 2.0,
                          counts: Optional[Tensor] = None, features: Optional[Tensor] = None,
                          min_sim: float = 0.0, max_sim: float = 1.0) -> Tensor:
    """CM3's calibrated uniformity ``log mean_{a<b} exp(-t (||x_a - x_b||^2 - 2 + 2 s_ab))`` (eq. 10).

    Args:
        x: ``[n, d]`` representations (CM3 passes L2-normalised rows).
        sim: ``[n, n]`` symmetric similarities ``s_ab``; ``None`` (and no ``features``) means ``s = 1``
            everywhere, i.e. the standard uniformity ``log mean exp(-t ||x_a - x_b||^2)`` of
            :func:`uniformity`.
        t: temperature (2).
        counts: optional ``[n]`` multiplicities: row ``a`` stands for ``counts[a]`` identical rows, and
            the result is the mean over all pairs of that multiset (pairs of two copies of the same row
            have distance 0 and similarity ``s_aa``). Lets a batch with repeated ids be evaluated on its
            distinct rows and still give exactly the loss over every pair of batch rows.
        features: instead of ``sim``, per-row vectors ``h [n, k]`` with
            ``s_ab = clamp(cos(h_a, h_b), min_sim, max_sim)`` (CM3: the fused multimodal features),
            computed inside -- the same value as ``sim=clamped_cosine(h, None, min_sim, max_sim)``
            but cheaper. Gradients flow into ``h`` unless it is detached (a fixed calibration weight).

    For unit vectors each pair's term equals the standard term times ``exp(2t (1 - s_ab))``
    (Theorem 1). Computed from Gram matrices (``||a-b||^2 = |a|^2 + |b|^2 - 2 a.b``) with one
    log-sum-exp over the ordered pairs ``a != b`` -- each unordered pair twice, which leaves the mean
    unchanged -- so no pair index is ever built. A custom backward reuses the forward's exponentials
    and uses the symmetry of the pair matrix: one ``[n, n] x [n, d]`` product for ``x`` (and one
    ``[n, n] x [n, k]`` for ``h``). Cost: ``O(n^2 (d + k))`` flops, ``O(n^2)`` memory.
    """
    n = x.shape[0]
    total = float(n if counts is None else counts.sum())
    if total < 2 or n == 0:
        return x.new_zeros(())
    if sim is not None and features is not None:
        raise ValueError("give sim or features, not both")
    if sim is not None and sim.shape != (n, n):
        raise ValueError(f"sim must be [{n}, {n}], got {tuple(sim.shape)}")
    if features is not None:
        if features.shape[0] != n:
            raise ValueError(f"features must have {n} rows, got {tuple(features.shape)}")
        features = F.normalize(features, dim=-1)
    c = None if counts is None else counts.to(device=x.device, dtype=x.dtype)
    return _PairLogMeanExp.apply(x, sim, features, float(t), float(min_sim), float(max_sim), c, total)


def _row_blocks(n: int):
    """Row blocks ``[r0, r1)`` for the upper-triangular pair computation (384+ rows each, <= 8)."""
    k = max(1, min(8, n // 384))
    edges = [round(j * n / k) for j in range(k + 1)]
    return list(zip(edges[:-1], edges[1:]))


class _PairLogMeanExp(torch.autograd.Function):
    """``log( sum_{a != b} w_ab exp(L_ab) / (N (N-1)) )``, ``L = -t (|a|^2 + |b|^2 - 2 a.b - 2 + 2 s)``.

    ``w_ab = c_a c_b`` (1 without counts) off the diagonal; the diagonal holds the ``c (c-1)`` ordered
    pairs of copies of one row (distance 0), absent without counts. ``s`` is ``sim``, or
    ``clamp(hn hn^T, lo, hi)`` for unit rows ``hn``, or 1.

    The matrix is symmetric, so it is computed by row blocks ``[r0, r1)`` over the columns ``r0..n-1``
    only: the block's own square (ordered pairs, both halves) plus the pairs to its right, which stand
    for both orders (weight 2). That is about half of the ``n^2`` logits and of the forward flops;
    the backward needs the same ``n^2 d`` flops as one full ``[n, n] x [n, d]`` product.
    """

    @staticmethod
    def forward(ctx, x, sim, hn, t, lo, hi, c, total):  # type: ignore[override]
        n = x.shape[0]
        # logits as ONE matmul of augmented rows:
        # [2t a, -t|a|^2, 1, (2t), (log c_a), (1)] . [b, 1, -t|b|^2, (1), (1), (log c_b)], then -2t s
        tsq = (-t * (x * x).sum(-1)).unsqueeze(1)
        one = torch.ones_like(tsq)
        left, right = [x * (2.0 * t), tsq, one], [x, one, tsq]
        if sim is not None or hn is not None:
            left.append(one * (2.0 * t))
            right.append(one)
        if c is not None:
            log_c = c.log().unsqueeze(1)
            left += [log_c, one]
            right += [one, log_c]
        a, b = torch.cat(left, 1), torch.cat(right, 1)
        # the pair (a, a): distance 0, weight c_a (c_a - 1) ordered pairs (none without counts)
        if c is None:
            diag = x.new_full((n,), float("-inf"))
        else:
            s_aa = (sim.diagonal() if sim is not None else
                    (hn * hn).sum(-1).clamp(lo, hi) if hn is not None else 1.0)
            diag = 2.0 * t * (1.0 - s_aa) + torch.log(c * (c - 1))
        blocks = _row_blocks(n)
        need_inside = hn is not None and ctx.needs_input_grad[2]
        bufs, insides, maxima = [], [], []
        for r0, r1 in blocks:
            if hn is not None:
                s = hn[r0:r1] @ hn[r0:].t()
                if need_inside:  # 1.0 where the clamp passes gradients (float ops: no bool masks)
                    sc = s.clamp(lo, hi)
                    insides.append(s.sub_(sc).eq_(0.0))
                else:
                    sc = s.clamp_(lo, hi)
                logit = sc.addmm_(a[r0:r1], b[r0:].t(), beta=-2.0 * t)
            elif sim is not None:
                logit = torch.addmm(sim[r0:r1, r0:], a[r0:r1], b[r0:].t(), beta=-2.0 * t)
            else:
                logit = a[r0:r1] @ b[r0:].t()
            logit[:, : r1 - r0].diagonal().copy_(diag[r0:r1])
            maxima.append(logit.max())
            bufs.append(logit)
        m = torch.stack(maxima).max()
        if not torch.isfinite(m):
            m = torch.zeros_like(m)
        denom = x.new_zeros(())
        for (r0, r1), p in zip(blocks, bufs):
            p.sub_(m).exp_()  # reuse the buffers
            w = r1 - r0
            denom = denom + p[:, :w].sum() + 2.0 * p[:, w:].sum()
        ctx.save_for_backward(x, denom, hn, *bufs, *insides)
        ctx.t, ctx.blocks, ctx.n_bufs, ctx.has_sim = t, blocks, len(bufs), sim is not None
        return m + denom.log() - math.log(total * (total - 1))

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, denom, hn, *rest = ctx.saved_tensors
        probs, insides = rest[: ctx.n_bufs], rest[ctx.n_bufs:]
        t, n = ctx.t, x.shape[0]
        scale = grad / denom  # d out / d logits_ab (one ordered pair) = grad * P_ab / denom
        gx = gsim = ghn = None
        if ctx.needs_input_grad[0]:
            # d logits_ab / d x_a = 2t (x_b - x_a), twice (from (a, b) and (b, a))
            px, rs = torch.zeros_like(x), x.new_zeros(n)
            for (r0, r1), p in zip(ctx.blocks, probs):
                px[r0:r1].addmm_(p, x[r0:])
                rs[r0:r1] += p.sum(1)
                if r1 < n:
                    px[r1:].addmm_(p[:, r1 - r0:].t(), x[r0:r1])
                    rs[r1:] += p[:, r1 - r0:].sum(0)
            gx = (4.0 * t) * scale * (px - rs.unsqueeze(1) * x)
        if ctx.needs_input_grad[1] and ctx.has_sim:
            gsim = x.new_zeros(n, n)
            for (r0, r1), p in zip(ctx.blocks, probs):
                gsim[r0:r1, r0:] = p
                gsim[r1:, r0:r1] = p[:, r1 - r0:].t()
            gsim = gsim * (-2.0 * t * scale)
        if ctx.needs_input_grad[2]:
            # s_ab = hn_a . hn_b inside the clamp, likewise from both orders
            ghn = torch.zeros_like(hn)
            for (r0, r1), p, inside in zip(ctx.blocks, probs, insides):
                wgt = p * inside
                ghn[r0:r1].addmm_(wgt, hn[r0:])
                if r1 < n:
                    ghn[r1:].addmm_(wgt[:, r1 - r0:].t(), hn[r0:r1])
            ghn = (-4.0 * t) * scale * ghn
        return gx, gsim, ghn, None, None, None, None, None


class _WeightedLogSumExp(torch.autograd.Function):
    """``sum_b w_b log sum_j c_j exp(a_b . x_j)`` for ``a [B, d]``, ``x [N, d]``, constant row weights ``w [B]``
    and column weights ``c [N]`` (or ``None``: 1).

    The gradients are known up to the incoming scalar once the forward has the softmax rows ``P_b``:
    ``da_b = w_b P_b x`` and ``dx = P^T (w (.) a)``. So the forward runs by blocks of rows -- scores, row
    maximum, ``exp``, row sums and both gradient products per block, in one reused block buffer -- and never
    holds more than a block of the ``[B, N]`` matrix; the backward only scales."""

    @staticmethod
    def forward(ctx, a, x, w, c, block):  # type: ignore[override]
        need_a, need_x = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        n, d = a.shape
        cw = x.new_ones(x.shape[0]) if c is None else c
        # right-hand side of the row sums and of da in one product: [c (.) x | c]
        rhs = torch.cat([x * cw.unsqueeze(1), cw.unsqueeze(1)], 1) if need_a else cw
        lse = a.new_empty(n)
        da = a.new_empty(n, d) if need_a else None
        dx = torch.zeros_like(x) if need_x else None
        xt = x.t()
        buf = a.new_empty(min(block, n), x.shape[0])
        for lo in range(0, n, block):
            hi = min(lo + block, n)
            blk = buf[: hi - lo]
            torch.mm(a[lo:hi], xt, out=blk)
            top = blk.amax(1)
            blk.sub_(top.unsqueeze(1)).exp_()
            if need_a:
                prod = blk @ rhs
                total = prod[:, d]
            else:
                total = blk @ cw
            lse[lo:hi] = total.log() + top
            q = (w[lo:hi] / total).unsqueeze(1)
            if need_a:
                da[lo:hi] = q * prod[:, :d]
            if need_x:
                dx.addmm_(blk.t(), q * a[lo:hi])
        if need_x and c is not None:
            dx.mul_(c.unsqueeze(1))
        ctx.save_for_backward(da, dx)
        return (w * lse).sum()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        da, dx = ctx.saved_tensors
        return (None if da is None else da * grad), (None if dx is None else dx * grad), None, None, None


#: bytes of the ``[block, N]`` score block of :func:`weighted_logsumexp` when its ``block`` is not given
LSE_BLOCK_BYTES = 32 << 20


def weighted_logsumexp(a: Tensor, x: Tensor, weights: Optional[Tensor] = None,
                       col_weights: Optional[Tensor] = None, block: Optional[int] = None) -> Tensor:
    """``sum_b w_b log sum_j c_j exp(a_b . x_j)`` (scalar) for ``a [B, d]`` against every row of ``x [N, d]``, with
    row weights ``w [B]`` and column weights (multiplicities) ``c [N]`` (default 1; constants, no gradient), by
    blocks of ``block`` rows (:class:`_WeightedLogSumExp`): the same value and gradients as
    ``(w * logsumexp(a @ x.T + log c, 1)).sum()`` without its ``[B, N]`` buffers.

    ``block`` defaults to as many rows as fit :data:`LSE_BLOCK_BYTES` (32 MB; at least 128): the whole batch
    in one block at in-batch sizes. This measured faster than 128-row blocks on TikTok (2 cores, steps
    alternating in one process: LightGCN + CROSS 141 -> 134 ms, FREEDOM + CROSS 140 -> 131, SLMRec 64 -> 61,
    AnchorRec 67 -> 65, LGMRec and MGCN level): each block is ~10 operator calls, and at these sizes their
    overhead outweighs what a cache-sized block saves."""
    w = a.new_ones(a.shape[0]) if weights is None else weights.detach().to(a.dtype)
    c = None if col_weights is None else col_weights.detach().to(a.dtype)
    if block is None:
        block = lse_block_rows(x.shape[0], a.element_size())
    return _WeightedLogSumExp.apply(a, x, w, c, int(block))


def lse_block_rows(n_cols: int, itemsize: int = 4) -> int:
    """Rows of a :func:`weighted_logsumexp` block against ``n_cols`` columns: a ``[rows, n_cols]`` block within
    :data:`LSE_BLOCK_BYTES`, at least 128 rows."""
    return max(128, LSE_BLOCK_BYTES // max(1, int(n_cols) * int(itemsize)))


class _SoftCrossEntropy(torch.autograd.Function):
    """``-scale sum_{i,k} r_ik log_softmax(z_i)_k`` for logits ``z [n, P]`` and constant targets ``r [n, P]``.

    With ``rho_i = sum_k r_ik``: the value is ``scale (sum_i rho_i lse_i - <r, z>)`` and the gradient
    ``scale (rho_i softmax(z_i) - r_i)``, formed in the forward in the buffer that held the exponentials (so
    no ``[n, P]`` log-probabilities are kept, and the backward only scales)."""

    @staticmethod
    def forward(ctx, z, r, scale):  # type: ignore[override]
        top = z.amax(1, keepdim=True)
        e = torch.sub(z, top).exp_()
        total = e.sum(1, keepdim=True)
        rho = r.sum(1, keepdim=True)
        value = (rho * (total.log() + top)).sum() - torch.dot(r.reshape(-1), z.reshape(-1))
        grad = e.mul_(rho * (scale / total)).sub_(r, alpha=scale) if ctx.needs_input_grad[0] else None
        ctx.save_for_backward(grad)
        return value * scale

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (None if grad is None else grad * g), None, None


def soft_cross_entropy(logits: Tensor, target: Tensor, scale: float = 1.0) -> Tensor:
    """``-scale * sum_{i,k} target_ik log_softmax(logits_i)_k`` (scalar) for ``logits, target [n, P]``; the
    target is a constant (no gradient), its rows need not sum to 1 (a row standing for several rows sums to
    their number). ``scale = 1 / n`` gives SwAV's swapped-prediction loss ``- mean_i sum_k q_ik log p_ik``.
    The same value and gradient as the ``log_softmax`` expression, with fewer passes over ``[n, P]``."""
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    return _SoftCrossEntropy.apply(logits, target.detach().to(logits.dtype), float(scale))


def unit_info_nce(anchor: Tensor, positive: Tensor, temperature: float = 0.2,
                  all_rows: Optional[Tensor] = None, reduction: str = "mean") -> Tensor:
    """:func:`info_nce` (L2-normalised): row ``b`` of ``anchor [B, d]`` must pick ``positive[b]`` among the rows
    of ``all_rows`` (default ``positive``, in-batch); ``reduction`` ``mean`` or ``sum`` over the rows (through
    :func:`weighted_logsumexp`, by blocks of rows), or ``none`` (``[B]``)."""
    a, p = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    x = p if all_rows is None else F.normalize(all_rows, dim=-1)
    positive_term = (a * p).sum(-1) / temperature
    if reduction == "none":
        return torch.logsumexp(a @ x.t() / temperature, dim=1) - positive_term
    total = weighted_logsumexp(a / temperature, x) - positive_term.sum()
    return total if reduction == "sum" else total / a.shape[0]


def paired_info_nce(anchor: Tensor, positive: Tensor, anchor_index: Tensor, positive_index: Tensor,
                    tau: float) -> Tensor:
    """In-batch InfoNCE of the ``B`` pairs ``(anchor[anchor_index[b]], positive[positive_index[b]])``, cosine
    logits / ``tau``, every batch positive (repeats included) a candidate of every row: exactly
    ``unit_info_nce(anchor[anchor_index], positive[positive_index], tau)``, computed on the distinct rows
    ``anchor [n_a, d]`` and ``positive [n_p, d]``: one log-sum-exp per distinct anchor weighted by its count,
    over the distinct positives weighted by theirs (:func:`weighted_logsumexp`), ``O(n_a n_p d)`` and no
    ``[B, B]`` buffer (a TikTok batch of 2,048 pairs has ~1,800 distinct users and ~1,340 distinct items)."""
    a, p = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    a_count = torch.bincount(anchor_index, minlength=a.shape[0]).to(a.dtype)
    p_count = torch.bincount(positive_index, minlength=p.shape[0]).to(a.dtype)
    lse = weighted_logsumexp(a / tau, p, a_count, col_weights=p_count)
    pos = (a[anchor_index] * p[positive_index]).sum() / tau
    return (lse - pos) / anchor_index.numel()


def info_nce_counts(anchor: Tensor, positive: Tensor, tau: float, counts: Optional[Tensor] = None,
                    normalized: bool = False) -> Tensor:
    """In-batch InfoNCE (cosine logits / ``tau``) over rows that stand for ``counts [n]`` identical rows each.

    Without ``counts`` it equals :func:`mmgraph.losses.info_nce` (``mean_k -log softmax_k(cos(a_k, b) /
    tau)_k``). With them it equals ``info_nce`` of the expanded ``[sum(counts), d]`` batch exactly (a
    repeated item is a negative of itself as often as it repeats, as in the released code), in
    ``O(n^2 d)`` instead of ``O(B^2 d)``: ``sum_j c_j (-s_jj + log sum_l c_l exp(s_jl)) / sum_j c_j``.
    Computed by :func:`weighted_logsumexp` (by blocks of rows, no ``[n, n]`` buffer). ``normalized``: the rows
    are already L2-normalised.
    """
    a, b = (anchor, positive) if normalized else (F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1))
    n = a.shape[0]
    if counts is None:
        c, w = None, a.new_full((n,), 1.0 / n)
    else:
        c = counts.to(a.dtype)
        w = c / c.sum()
    return weighted_logsumexp(a / tau, b, w, col_weights=c) - (w * (a * b).sum(-1)).sum() / tau


def batch_info_nce(anchor: Tensor, positive: Tensor, ids: Tensor, tau: float) -> Tensor:
    """In-batch InfoNCE (cosine logits / ``tau``) of the rows ``ids [B]`` (repeats kept) of the tables
    ``anchor`` and ``positive`` ``[N, d]``: ``unit_info_nce(anchor[ids], positive[ids], tau)`` exactly, computed
    on the distinct ids with their counts (:func:`info_nce_counts`): ``O(n^2 d)`` for ``n`` distinct rows
    instead of ``O(B^2 d)`` (on TikTok a batch's 2,048 positives are ~1,340 distinct items)."""
    uniq, counts = torch.unique(ids, return_counts=True)
    return info_nce_counts(anchor[uniq], positive[uniq], tau, counts)
