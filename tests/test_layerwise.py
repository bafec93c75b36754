from __future__ import annotations

import pytest
import torch

from tracin_we.core.models import CNNClassifier
from tracin_we.experiments.cancellation import layer_groups
from tracin_we.experiments.layerwise import layer_scores
from tracin_we.influence import scores

from .test_cancellation import tiny_bert, tiny_data


def checkpoints(model, n: int = 2) -> list[tuple[dict, float]]:
    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(n):
        state = {
            k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()
        }
        out.append((state, 0.5 / (i + 1)))
    return out


@pytest.mark.parametrize(
    "make", [tiny_bert, lambda: CNNClassifier(3, vocab_size=40, embed_dim=6, channels=4)]
)
def test_each_column_is_tracin_on_that_layer_summed_over_the_reference_set(make):
    model = make()
    ckpts, train, reference = checkpoints(model), tiny_data(6), tiny_data(4)[::-1]
    table = layer_scores(model, ckpts, train, reference, batch_size=4)
    groups = layer_groups(model)
    assert list(table.columns) == list(dict.fromkeys(groups.values()))
    expected_we = scores("tracin-we", model, ckpts, train, reference).sum(0).double()
    # float32 at batch 4 against scores' default batch: other summation orders (seen: at most
    # 5% of this tolerance).
    assert torch.allclose(
        torch.tensor(table["word_embeddings"].values), expected_we, rtol=1e-4, atol=1e-7
    )
    for group in ("classifier", table.columns[1]):
        names = [n for n, g in groups.items() if g == group]
        expected = scores("tracin-layer", model, ckpts, train, reference, params=names).sum(0)
        assert torch.allclose(
            torch.tensor(table[group].values), expected.double(), rtol=1e-4, atol=1e-7
        ), group


def test_empty_reference_is_refused():
    model = tiny_bert()
    with pytest.raises(ValueError, match="reference is empty"):
        layer_scores(model, checkpoints(model), tiny_data(3), [])


def test_layer_deletion_runs_one_sweep_per_layer(tiny_data_dir):
    from tracin_we.experiments.deletion import DeletionConfig, run_deletion
    from tracin_we.experiments.layerwise import layer_deletion

    config = DeletionConfig.from_params(
        model="cnn",
        n_train=40,
        n_val=8,
        n_test=16,
        max_length=12,
        epochs=1,
        lr=0.05,
        batch_size=8,
        checkpoint_epochs=[1],
        data_dir=str(tiny_data_dir),
        methods=["random"],
        ks=[3],
        n_test_points=4,
        seeds=[0],
        backend="sequential",
        n_bootstrap=50,
    )
    table = layer_deletion(config, groups=["word_embeddings", "classifier"], progress=False)
    assert table["group"].tolist() == ["word_embeddings", "classifier"]
    direct = run_deletion(
        DeletionConfig.from_params(**{**_flat(config), "methods": ["tracin-we"]}), progress=False
    ).summary.iloc[0]
    assert table.iloc[0]["DEL+"] == pytest.approx(direct["DEL+"])
    assert table.iloc[0]["DEL-"] == pytest.approx(direct["DEL-"])
    with pytest.raises(ValueError, match=r"unknown layer names \['layer7'\]"):
        layer_deletion(config, groups=["layer7"])


def _flat(config) -> dict:
    from dataclasses import asdict

    flat = asdict(config)
    train = flat.pop("train")
    return {
        **train.pop("data"),
        **train,
        **{k: v for k, v in flat.items() if k not in ("method_options",)},
    }
