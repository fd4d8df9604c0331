"""Scores of users with the rows of an affine item map, the gradient taken on the user side."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mmgraph.nn.linear import linear


#: the backward takes the per-item coefficient form when items <= this x the scored slots (K B); measured on a
#: 2-core CPU: 2-2.7x faster at 6.7-7k items for 6k slots (d_x 128-4096), slower at 63k items (d_x 384)
DENSE_COEF_RATIO = 2


class _AffineRowScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, users: Tensor, table: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                ids: Tensor) -> Tensor:
        k, b = ids.shape
        rows = table.index_select(0, ids.reshape(-1)).view(k, b, -1)
        ctx.save_for_backward(users, rows, x, weight, ids)
        ctx.has_bias = bias is not None
        return (rows * users.unsqueeze(0)).sum(-1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        users, rows, x, weight, ids = ctx.saved_tensors
        need_u, _, need_x, need_w, need_b, _ = ctx.needs_input_grad
        g = grad.unsqueeze(-1)                                                   # [K, B, 1]
        d_users = d_x = d_weight = d_bias = None
        if need_u:
            d_users = (g * rows).sum(0)                                          # sum_k g_kb T[i_kb]
        if not (need_x or need_w or need_b):
            return d_users, None, d_x, d_weight, d_bias, None
        if x.shape[0] <= DENSE_COEF_RATIO * ids.numel():
            # few items for the slots: every gradient of the map through the coefficients C_i = sum over the
            # slots (k, b) holding item i of g_kb u_b (one index_add of [K B, d] rows), kept for the n distinct
            # items only (~55 % of the catalogue on TikTok and Baby): dW = C^T x[items], dx[items] = C W,
            # db = sum_i C_i. Two [n, d] x [n, d_x]-sized products instead of passes over [K, B, d_x] gathered
            # rows; against C over the whole catalogue, steps 4-11 % shorter on TikTok and Baby
            flat = ids.reshape(-1)
            used = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            used[flat] = True
            items = used.nonzero().squeeze(1)                                   # [n], ascending
            row_of = torch.cumsum(used, 0) - 1                                  # item id -> its row of C
            coef = users.new_zeros(items.shape[0], users.shape[1])
            coef.index_add_(0, row_of[flat], (g * users.unsqueeze(0)).reshape(-1, users.shape[1]))
            if need_w:
                d_weight = coef.t() @ x.index_select(0, items)
            if need_x:
                d_x = torch.zeros_like(x).index_copy_(0, items, coef @ weight)
            if need_b and ctx.has_bias:
                d_bias = coef.sum(0)
            return d_users, None, d_x, d_weight, d_bias, None
        # many items (e.g. 63k): the gathered rows' form, whose cost follows the slots, not the catalogue
        if need_w:
            # dW = sum_kb g_kb u_b x_{i_kb}^T = U^T Z with Z_b = sum_k g_kb x_{i_kb}: a [B, d] x [B, d_x]
            # product instead of the table's [I, d] x [I, d_x] one
            z = (g * x.index_select(0, ids.reshape(-1)).view(*ids.shape, -1)).sum(0)
            d_weight = users.t() @ z
        if need_b and ctx.has_bias:
            d_bias = users.t() @ grad.sum(0)
        if need_x:
            uw = users @ weight                                                  # [B, d_x]
            d_x = torch.zeros_like(x).index_add_(0, ids.reshape(-1), (g * uw.unsqueeze(0)).reshape(-1, x.shape[1]))
        return d_users, None, d_x, d_weight, d_bias, None


def affine_table(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Every item's row ``x @ weight.T + bias`` without gradient: ``[I, d]``."""
    with torch.no_grad():
        w = weight.detach().contiguous()    # a column slice (VBPR's W_m) multiplies ~1.5x slower
        return linear(x.detach(), w, None if bias is None else bias.detach())


def affine_row_scores(users: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], ids: Tensor,
                      table: Optional[Tensor] = None) -> Tensor:
    """``s[k, b] = users[b] . (weight @ x[ids[k, b]] + bias)`` with gradients for ``users``, ``x``, ``weight`` and
    ``bias`` -- the same values and gradients as scoring against ``F.linear(x, weight, bias)[ids]``.

    The item map's rows come from ``table`` (:func:`affine_table`, computed once and shared, e.g. with a
    no-gradient candidate scoring) and the backward never differentiates the table: with few items for the
    ``K B`` slots (``I <= 2 K B``) it sums each item's ``g_kb u_b`` into ``C [n, d]`` over the ``n`` distinct
    items used and takes ``dW = C^T x[used]``, ``dx[used] = C W``, ``db = sum C``; with many, ``dW = U^T Z`` with
    ``Z = sum_k g_k x[ids_k]`` (``[B, d] x [B, d_x]``) and ``dx`` a scatter of ``g (U W)`` onto the rows used.

    Args:
        users: ``[B, d]``.
        x: ``[I, d_x]`` item features (a parameter or a frozen buffer).
        weight: ``[d, d_x]``; bias: ``[d]`` or None.
        ids: ``[K, B]`` item ids, ``K`` items per user row.
        table: ``[I, d]`` = ``affine_table(x, weight, bias)`` when the caller has it.

    Returns:
        ``[K, B]``.
    """
    if table is None:
        table = affine_table(x, weight, bias)
    return _AffineRowScores.apply(users, table, x, weight, bias, ids)
