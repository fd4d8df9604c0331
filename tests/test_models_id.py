import pytest
import torch

from mmgraph.models.registry import available_methods, get_model_class
from mmgraph.train.config import load_config
from mmgraph.train.run import train
from tests.helpers import popularity_recall


@pytest.mark.parametrize("method,extra", [("mf", {}), ("lightgcn", {}),
                                          ("directau", {"gamma": 1.0}),
                                          ("directau", {"encoder": "lightgcn", "n_layers": 1})])
def test_id_models_learn_and_beat_popularity(synth, method, extra):
    cfg = load_config(method, overrides={"epochs": 25, "patience": 5, "seed": 1, "learning_rate": 5e-3,
                                         "log_geometry": False, **extra})
    result, _ = train(method, synth, cfg, progress=False)
    assert result["test"]["recall@20"] > popularity_recall(synth) + 0.01


def test_registry_lists_core_methods():
    names = available_methods()
    for name in ("mf", "lightgcn", "directau"):
        assert name in names
        assert get_model_class(name.upper()) is names[name]


def test_lightgcn_scores_use_mean_over_layers(synth):
    from mmgraph.graph.bipartite import normalized_bipartite_adj
    from mmgraph.train.run import build_model
    model = build_model("lightgcn", synth, {"n_layers": 2})
    adj = normalized_bipartite_adj(synth.train, synth.n_users, synth.n_items).csr.to_dense()
    x = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach()
    ref = (x + adj @ x + adj @ adj @ x) / 3
    u, i = model.embeddings()
    torch.testing.assert_close(torch.cat([u, i]), ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("encoder", ["mf", "lightgcn"])
def test_directau_loss_is_the_papers_formula(synth, encoder):
    """DirectAU eq. 3-5: ``||u~ - i~||^2`` averaged over the batch pairs, plus ``gamma`` times the mean of the users'
    and the items' ``log mean_{a<b} exp(-t ||x~_a - x~_b||^2)`` over the batch's DISTINCT users / positive items
    (x~ = x / ||x||), written out pair by pair in float64."""
    import itertools
    import math

    from mmgraph.models.base import Batch
    from mmgraph.train.run import build_model
    gamma, t = 0.3, 1.5
    model = build_model("directau", synth, {"encoder": encoder, "n_layers": 1, "gamma": gamma, "uniformity_t": t})
    rows = torch.arange(0, 60, 3)
    users, pos = torch.as_tensor(synth.train[rows, 0]), torch.as_tensor(synth.train[rows, 1])
    users[1] = users[0]                                                   # a repeated user counts once
    out = model.loss(Batch(users, pos, torch.zeros_like(users)))
    u, i = (x.detach().double() for x in model.forward())
    unit = lambda x: x / x.norm()                                                     # noqa: E731
    align = sum(float((unit(u[a]) - unit(i[b])).pow(2).sum()) for a, b in zip(users, pos)) / len(users)

    def uniform(table, ids):
        ids = sorted(set(ids.tolist()))
        pairs = [math.exp(-t * float((unit(table[a]) - unit(table[b])).pow(2).sum()))
                 for a, b in itertools.combinations(ids, 2)]
        return math.log(sum(pairs) / len(pairs))
    ref = align + gamma * (uniform(u, users) + uniform(i, pos)) / 2
    assert out.loss.item() == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert out.terms["align"].item() == pytest.approx(align, rel=1e-5)
