"""Shared test utilities."""
from __future__ import annotations

from mmgraph.evaluation import Evaluator
from mmgraph.models.pop import popularity_embeddings


def popularity_recall(dataset, split="test", k=20) -> float:
    users, items = popularity_embeddings(dataset)
    return Evaluator(dataset, split, ks=[k]).evaluate(users, items)[f"recall@{k}"]


#: training settings of the baseline "learns" tests (synthetic data, 30 epochs)
BASELINE_TRAIN = {"epochs": 30, "patience": 5, "seed": 1, "learning_rate": 5e-3, "batch_size": 256,
                  "log_geometry": False, "graph_cache": False}


def random_batch(ds, n: int = 40, seed: int = 0):
    """A :class:`~mmgraph.models.base.Batch` of ``n`` random training pairs with uniform negatives."""
    import torch
    from mmgraph.models.base import Batch
    g = torch.Generator().manual_seed(seed)
    rows = torch.from_numpy(ds.train)[torch.randint(0, len(ds.train), (n,), generator=g)]
    return Batch(rows[:, 0], rows[:, 1], torch.randint(0, ds.n_items, (n,), generator=g))


def assert_same_gradients(got, ref, params, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    """The gradients of the scalars ``got`` and ``ref`` with respect to every tensor of ``params`` agree (a
    parameter that ``ref`` does not reach must get none, or zeros, from ``got``)."""
    import torch
    params = list(params)
    for a, r in zip(torch.autograd.grad(got, params, allow_unused=True, retain_graph=True),
                    torch.autograd.grad(ref, params, allow_unused=True, retain_graph=True)):
        if r is None:
            assert a is None or float(a.abs().max()) == 0
        else:
            torch.testing.assert_close(a, r, rtol=rtol, atol=atol)


def mmrec_interleaved_bpr(out, batch, n_users: int):
    """MMRec's ``calculate_loss`` of GRCN / MMGCN written as it is: ``(bpr, user_tensor, item_tensor)`` with the
    (user, positive) and (user, negative) rows interleaved over the concatenated ``[U + I, d]`` representation
    of ``out`` (a :class:`~mmgraph.models.base.LossOutput`); item ids in the tensors are offset by ``n_users``."""
    import torch
    rep = torch.cat([out.user_emb, out.item_emb])
    user_tensor = batch.users.repeat_interleave(2)
    item_tensor = torch.stack([batch.pos + n_users, batch.neg + n_users]).t().reshape(-1)
    score = (rep[user_tensor] * rep[item_tensor]).sum(1).view(-1, 2)
    bpr = -torch.log(torch.sigmoid(score @ torch.tensor([[1.0], [-1.0]], dtype=score.dtype))).mean()
    return bpr, user_tensor, item_tensor


def load_script(name: str):
    """The module of ``scripts/<name>.py`` (a script is not a package module: loaded from its file)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
