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
