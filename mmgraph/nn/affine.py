"""Scores of users with the rows of an affine item map ``x @ weight.T + bias``, never differentiating the item
table: :func:`affine_row_scores` reads the rows from a table computed without gradient;
:func:`affine_feature_scores` carries the users into the feature space instead (no table at all)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mmgraph.nn.linear import linear, weight_grad


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
                d_weight = weight_grad(coef, x.index_select(0, items))
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
            d_weight = weight_grad(users, z)
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


class _AffineFeatureScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, users: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], ids: Tensor,
                uw: Tensor) -> Tensor:
        k, b = ids.shape
        rows = x.index_select(0, ids.reshape(-1)).view(k, b, -1)                # [K, B, d_x]
        s = (rows * uw.unsqueeze(0)).sum(-1)
        if bias is not None:
            s = s + users @ bias
        ctx.save_for_backward(users, rows, x, weight, bias, ids, uw)
        return s

    @staticmethod
    def backward(ctx, grad: Tensor):
        users, rows, x, weight, bias, ids, uw = ctx.saved_tensors
        need_u, need_x, need_w, need_b, _, _ = ctx.needs_input_grad
        d_users = d_x = d_weight = d_bias = None
        g_sum = grad.sum(0)                                                        # [B]
        if need_u or need_w:
            z = rows[0] * grad[0].unsqueeze(1)                                     # sum_k g_kb x[i_kb]: [B, d_x]
            for k in range(1, rows.shape[0]):   # K is small: in place, ~10x faster than einsum's batched product
                z.addcmul_(rows[k], grad[k].unsqueeze(1))
            if need_u:
                d_users = z @ weight.t()
                if bias is not None:
                    d_users = d_users.addr_(g_sum, bias)
            if need_w:
                d_weight = weight_grad(users, z)
        if need_b and bias is not None:
            d_bias = users.t() @ g_sum
        if need_x:
            d_x = torch.zeros_like(x).index_add_(0, ids.reshape(-1),
                                                 (grad.unsqueeze(-1) * uw.unsqueeze(0)).reshape(-1, x.shape[1]))
        return d_users, d_x, d_weight, d_bias, None, None


#: an affine channel is scored in its feature space (:func:`affine_feature_scores`) when ``d_x <= this x d``;
#: measured on TikTok's 128-d features (d 64): BR-MRS plug-in steps 5-10 % shorter on FREEDOM, VBPR and BM3
FEATURE_SPACE_RATIO = 2.0


def in_feature_space(x: Tensor, weight: Tensor) -> bool:
    """Whether scoring a few items per user is cheaper in the feature space than through the item table."""
    return x.shape[1] <= FEATURE_SPACE_RATIO * weight.shape[0]


def user_side_map(users: Tensor, weight: Tensor) -> Tensor:
    """``users @ weight`` without gradient: ``[B, d_x]``, each user row carried into the feature space, where
    ``users[b] . (weight @ x_i)`` = ``(users @ weight)[b] . x_i``."""
    with torch.no_grad():
        return users.detach() @ weight.detach()


def affine_feature_scores(users: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], ids: Tensor,
                          uw: Optional[Tensor] = None) -> Tensor:
    """:func:`affine_row_scores` in the feature space: ``s[k, b] = (users @ weight)[b] . x[ids[k, b]] +
    users[b] . bias``, never forming the item table.

    Args:
        users: ``[B, d]``; x: ``[I, d_x]``; weight: ``[d, d_x]``; bias: ``[d]`` or None; ids: ``[K, B]``.
        uw: ``[B, d_x]`` = :func:`user_side_map` ``(users, weight)`` when the caller has it.
    """
    if uw is None:
        uw = user_side_map(users, weight)
    return _AffineFeatureScores.apply(users, x, weight, bias, ids, uw)
