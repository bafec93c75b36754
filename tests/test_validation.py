"""Every bad value is named before work starts: the rules all configs share (finite floats, seeds
in [0, 2**32)), the recipe's ranges, and the inputs of ``influence.scores`` and ``top_k``."""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from datasets import Dataset
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import texts
from tracin_we import influence
from tracin_we.core.data import DataConfig
from tracin_we.core.inputs import model_inputs
from tracin_we.core.models import CNNClassifier
from tracin_we.core.params import check_types, from_params
from tracin_we.experiments.deletion import DeletionConfig
from tracin_we.experiments.fixing import FixingConfig
from tracin_we.experiments.lds import LDSConfig
from tracin_we.influence.options import prepare_data
from tracin_we.training.recipe import TrainConfig

SMALL = {"n_train": 100, "n_test": 40}
VOCAB, CLASSES = 120, 3
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


SWEEPS = {DeletionConfig: {"n_test_points": 4, "ks": [5]}, LDSConfig: {"n_test_points": 4}}


def _config(cls: type, **params):
    """``cls`` with ``params`` (flat, as a notebook gives them), small enough to validate."""
    return from_params(cls, SMALL | SWEEPS.get(cls, {}) | params)


# --- the rules every config shares (params.check_types) -------------------------------------


@pytest.mark.parametrize(
    ("cls", "params", "message"),
    [
        (DataConfig, {"seed": -1}, r"seed=-1: seed must be an integer in \[0, 2\*\*32\)"),
        (TrainConfig, {"seed": 2**32}, r"seed=4294967296: seed must be an integer in \[0, 2"),
        (DeletionConfig, {"seeds": [0, -3]}, r"seeds=\[0, -3\]: -3 in it is not an integer"),
        (DeletionConfig, {"point_seed": -1}, "point_seed=-1: point_seed must be an integer"),
        (DeletionConfig, {"bootstrap_seed": 2**40}, "bootstrap_seed=1099511627776: bootstrap"),
        (LDSConfig, {"subset_seed": -5}, "subset_seed=-5: subset_seed must be an integer in"),
        (FixingConfig, {"seeds": (1, 2**32)}, r"seeds=\(1, 4294967296\): 4294967296 in it"),
    ],
)
def test_a_seed_outside_numpys_range_is_named(cls, params, message):
    with pytest.raises(ValueError, match=message):
        _config(cls, **params)


@pytest.mark.parametrize(
    ("cls", "params", "message"),
    [
        (TrainConfig, {"lr": math.inf}, r"lr=inf: lr must be finite, not NaN or ±inf"),
        (TrainConfig, {"lr": -math.inf}, r"lr=-inf: lr must be finite"),
        (TrainConfig, {"lr": math.nan}, r"lr=nan: lr must be finite"),
        (TrainConfig, {"lr": 10**400}, r"lr=1000.*: lr must be finite"),
        (TrainConfig, {"max_grad_norm": math.inf}, r"max_grad_norm=inf: max_grad_norm must be"),
        (TrainConfig, {"momentum": math.inf}, r"momentum=inf: momentum must be finite"),
        (DataConfig, {"label_noise": math.nan}, r"label_noise=nan: label_noise must be finite"),
        (DeletionConfig, {"ci": math.nan}, r"ci=nan: ci must be finite"),
        (FixingConfig, {"damping": math.inf}, r"damping=inf: damping must be finite"),
        (FixingConfig, {"p_range": (math.nan, 0.7)}, r"each number of p_range must be finite"),
        (LDSConfig, {"alpha": math.inf}, r"alpha=inf: alpha must be finite"),
    ],
)
def test_a_non_finite_float_is_named(cls, params, message):
    with pytest.raises(ValueError, match=message):
        _config(cls, **params)


@dataclass(frozen=True)
class _Floats:
    """A config with a float alone and inside a dict."""

    scale: float = 1.0
    per_class: dict[str, float] | None = None

    def __post_init__(self) -> None:
        check_types(self)


def test_every_float_is_finite_alone_and_inside_containers():
    with pytest.raises(ValueError, match=r"scale=inf: scale must be finite"):
        _Floats(scale=math.inf)
    with pytest.raises(ValueError, match=r"per_class=\{'a': nan\}: each number of per_class"):
        _Floats(per_class={"a": math.nan})
    assert _Floats(per_class={"a": 0.5}).per_class == {"a": 0.5}


@FAST
@given(st.one_of(st.floats(), st.integers(-(2**70), 2**70)))
@example(math.inf)
@example(10**400)
def test_any_lr_is_accepted_in_range_or_refused_by_name(lr):
    try:
        config = TrainConfig(data=DataConfig(**SMALL), lr=lr)
    except ValueError as err:
        assert str(err).startswith(f"lr={lr!r}"), err
        assert not 0 < lr <= sys.float_info.max  # exact for ints too (10**400 is no float)
    else:
        assert math.isfinite(config.lr) and config.lr > 0


@FAST
@given(st.integers(-(2**70), 2**70))
@example(2**32)
def test_any_seed_is_accepted_in_range_or_refused_by_name(seed):
    try:
        config = DataConfig(**SMALL, seed=seed)
    except ValueError as err:
        assert str(err).startswith(f"seed={seed}: seed must be an integer in [0, 2**32)"), err
        assert not 0 <= seed < 2**32
    else:
        assert 0 <= config.seed < 2**32


# --- the recipe's ranges ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"checkpoint_epochs": [5, 5, 10]},
            r"checkpoint_epochs=\[5, 5, 10\] must be a non-empty "
            r"list of distinct epochs in \[1, epochs=10\]",
        ),
        ({"checkpoint_epochs": [0]}, r"checkpoint_epochs=\[0\] must be .* in \[1, epochs=10\]"),
        ({"epochs": 2, "checkpoint_epochs": [3]}, r"checkpoint_epochs=\[3\] .*\[1, epochs=2\]"),
        ({"lr": 0}, r"lr=0 must be > 0"),
        ({"momentum": 1.0}, r"momentum=1.0 must be in \[0, 1\)"),
        ({"batch_size": 0}, r"batch_size=0 must be a positive integer"),
        ({"max_grad_norm": 0.0}, r"max_grad_norm=0.0 must be > 0 or None"),
    ],
)
def test_recipe_ranges_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data=DataConfig(**SMALL), **params)


# --- influence.scores: every argument checked before any gradient ----------------------------


def _model() -> CNNClassifier:
    torch.manual_seed(0)
    return CNNClassifier(CLASSES, vocab_size=VOCAB, embed_dim=8, channels=6)


@pytest.fixture
def case(monkeypatch: pytest.MonkeyPatch):
    """A model, two checkpoints, train and test lists; any work past validation fails."""
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the input was refused")

    monkeypatch.setattr(influence.api, "prepared", no_work)
    return model, [(state, 0.3), (state, 0.05)], texts(6, 0), texts(4, 1)


def _tensors(rows: list[dict], **changes) -> dict[str, torch.Tensor]:
    return model_inputs(rows) | changes


BAD_DATA = [
    (
        lambda tr: _tensors(tr, input_ids=_tensors(tr)["input_ids"].float()),
        r"train's input_ids has dtype torch.float32; token ids must be an integer tensor",
    ),
    (
        lambda tr: [ex | {"input_ids": [float(i) for i in ex["input_ids"]]} for ex in tr],
        r"train's input_ids has dtype torch.float32",
    ),
    (
        lambda tr: _tensors(tr, input_ids=_tensors(tr)["input_ids"].bool()),
        r"train's input_ids has dtype torch.bool",
    ),
    (
        lambda tr: _tensors(tr, input_ids=_tensors(tr)["input_ids"][0]),
        r"train's input_ids has shape \(12,\); it must be 2-D \(n_examples, length\)",
    ),
    (
        lambda tr: _tensors(tr, labels=torch.tensor([0.0, 1.0, math.nan, 0.0, 1.0, 2.0])),
        r"train's labels hold nan \(row 2\); a label must be a whole number",
    ),
    (lambda tr: [tr[0] | {"label": math.nan}, *tr[1:]], r"train\[0\] has label nan; a label"),
    (lambda tr: [*tr[:2], tr[2] | {"label": 1.5}, *tr[3:]], r"train\[2\] has label 1.5"),
    (
        lambda tr: Dataset.from_list([ex | {"label": ex["label"] + 0.5} for ex in tr]),
        r"train\[0\] has label 0.5",
    ),
    (
        lambda tr: _tensors(tr, labels=_tensors(tr)["labels"].bool()),
        r"train's labels have dtype torch.bool; give integer class indices",
    ),
    (
        lambda tr: _tensors(tr, attention_mask=_tensors(tr)["attention_mask"][:, :3]),
        r"train's attention_mask has shape \(6, 3\); it must be input_ids' \(6, 12\)",
    ),
    (
        lambda tr: _tensors(tr, attention_mask=_tensors(tr)["attention_mask"] * 2),
        r"train's attention_mask holds values other than 0 and 1",
    ),
    (
        lambda tr: _tensors(tr, token_type_ids=torch.zeros(6, 3, dtype=torch.long)),
        r"train's token_type_ids has shape \(6, 3\); it must be input_ids' \(6, 12\)",
    ),
    (
        lambda tr: _tensors(tr, input_ids=_tensors(tr)["input_ids"] - 200),
        r"train has token ids outside the model's 120-row word embedding \(min -200, max -86\)",
    ),
    (
        lambda tr: {k: v.numpy() for k, v in _tensors(tr).items()},
        r"train: a dict must hold tensors \(its input_ids is a ndarray\)",
    ),
    (lambda tr: "some text", r"train is a str; allowed: a datasets.Dataset, a list of exa"),
    (lambda tr: [tr[0], {"input_ids": [101]}], r"train cannot be read as model inputs"),
]


@pytest.mark.parametrize(("make", "message"), BAD_DATA)
def test_bad_data_is_named_before_any_gradient(case, make, message):
    model, ckpts, train, test = case
    with pytest.raises(ValueError, match=message):
        influence.scores("tracin-we", model, ckpts, make(train), test)


def _other_model_state() -> dict:
    return CNNClassifier(CLASSES, vocab_size=VOCAB, embed_dim=4, channels=6).state_dict()


BAD_CHECKPOINTS = [
    (lambda s: [(s, math.inf)], r"checkpoints\[0\] has learning rate inf; it must be > 0 and fin"),
    (lambda s: [(s, 0.1), (s, math.nan)], r"checkpoints\[1\] has learning rate nan"),
    (lambda s: [(s, True)], r"checkpoints\[0\] has learning rate True; it must be a number"),
    (lambda s: [(s, "0.1")], r"checkpoints\[0\] has learning rate '0.1'; it must be a number"),
    (lambda s: None, r"checkpoints must be a list of \(state_dict_or_path, lr\) pairs; got a No"),
    (lambda s: (s, 0.1), r"checkpoints\[0\] must be a .* pair; got a dict \(one checkpoint\?"),
    (lambda s: [(3, 0.1)], r"checkpoints\[0\] holds a value of type int; give a state dict"),
    (
        lambda s: [(s, 0.1), (_other_model_state(), 0.1)],
        r"checkpoints\[1\] does not fit the model \(CNNClassifier\): wrong shapes \['embedding",
    ),
    (
        lambda s: [({k: v for k, v in s.items() if "classifier" not in k}, 0.1)],
        r"checkpoints\[0\] does not fit the model \(CNNClassifier\): missing \['classifier",
    ),
]


@pytest.mark.parametrize(("make", "message"), BAD_CHECKPOINTS)
def test_bad_checkpoints_are_named_before_any_gradient(case, make, message):
    model, ckpts, train, test = case
    with pytest.raises(ValueError, match=message):
        influence.scores("tracin-we", model, make(ckpts[0][0]), train, test)


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("tracin-we", {"batch_size": 2.5}, r"batch_size=2.5 has type float; batch_size must be"),
        ("tracin-we-topk", {"top_tokens": True}, r"top_tokens=True has type bool"),
        ("influence-last", {"damping": 0}, r"damping=0 must be > 0"),
        ("influence-last", {"damping": math.inf}, r"damping=inf: damping must be finite"),
        ("representer", {"l2": math.nan}, r"l2=nan: l2 must be finite"),
        ("random", {"seed": -1}, r"seed=-1: seed must be an integer in \[0, 2\*\*32\)"),
        ("tracin-we", {"device": "gpu0"}, r"device='gpu0' is not a torch device"),
        ("tracin-we", {"device": "cuda:99"}, r"device='cuda:99': this machine has \d+ CUDA"),
        ("tracin-we", {"progress": "no"}, r"progress='no' has type str; progress must be True"),
        ("tracin-we-noc", {"special_token_ids": [1.5]}, r"special_token_ids=\[1.5\] has type"),
    ],
)
def test_bad_options_are_named_before_any_gradient(case, method, options, message):
    model, ckpts, train, test = case
    with pytest.raises(ValueError, match=message):
        influence.scores(method, model, ckpts, train, test, **options)


def test_other_integer_dtypes_and_numpy_numbers_are_accepted():
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    train, test = _tensors(texts(6, 0)), texts(4, 1)
    expected = influence.scores("tracin-we", model, [(state, 0.3)], train, test, progress=False)
    narrow = train | {
        "input_ids": train["input_ids"].to(torch.int32),
        "labels": train["labels"].to(torch.uint8),
        "attention_mask": train["attention_mask"].bool(),
    }
    numpy_lr = [(state, np.float32(0.3))]
    got = influence.scores("tracin-we", model, numpy_lr, narrow, test, batch_size=np.int64(4))
    torch.testing.assert_close(got, expected)
    floats = train | {"labels": train["labels"].double()}  # whole numbers: the class indices
    assert torch.equal(influence.scores("tracin-we", model, [(state, 0.3)], floats, test), expected)


# --- top_k ------------------------------------------------------------------------------------

SCORES = torch.arange(10.0).view(2, 5)


@pytest.mark.parametrize(
    ("scores", "k", "message"),
    [
        (SCORES, 2.5, r"k=2.5 has type float; k must be an int"),
        (SCORES, 2.0, r"k=2.0 has type float; k must be an int"),
        (SCORES, True, r"k=True has type bool; k must be an int"),
        (SCORES, "2", r"k='2' has type str; k must be an int"),
        (SCORES, 0, r"k=0 must be in \[1, 5\] \(the number of training examples\)"),
        (SCORES, 6, r"k=6 must be in \[1, 5\]"),
        (SCORES[0], 2, r"scores has shape \(5,\) and dtype torch.float32; it must be a 2-D"),
        (SCORES[None], 2, r"scores has shape \(1, 2, 5\) and dtype torch.float32; it must be"),
        (SCORES.numpy(), 2, r"scores is a ndarray; it must be a 2-D torch tensor"),
    ],
)
def test_top_k_names_k_and_the_shape_of_scores(scores, k, message):
    with pytest.raises(ValueError, match=message):
        influence.top_k(scores, k)


def test_top_k_takes_numpy_ints_and_refuses_a_string_for_proponents():
    assert influence.top_k(SCORES, np.int64(2)).indices.tolist() == [[4, 3], [4, 3]]
    with pytest.raises(ValueError, match=re.escape("proponents='opponents' must be True or")):
        influence.top_k(SCORES, 2, "opponents")


@FAST
@given(st.one_of(st.integers(-3, 8), st.floats(-3, 8), st.booleans()))
@example(2.5)
def test_any_k_is_used_or_refused_by_name(k):
    try:
        top = influence.top_k(SCORES, k)
    except ValueError as err:
        assert str(err).startswith(f"k={k!r}"), err
        assert isinstance(k, (bool, float)) or not 1 <= k <= 5
    else:
        assert type(k) is int and top.indices.shape == (2, k)


def test_checked_data_keeps_the_models_pad_id():
    rows = [{"input_ids": [5, 6, 7], "label": 0}, {"input_ids": [5], "label": 1}]
    tensors = prepare_data("train", rows, num_classes=2, vocab_size=10, pad_id=9)
    assert tensors["input_ids"].tolist() == [[5, 6, 7], [5, 9, 9]]
    assert tensors["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert tensors["input_ids"].dtype == tensors["labels"].dtype == torch.long


def test_top_k_takes_bools_only_for_proponents():
    scores = torch.arange(6.0).reshape(2, 3)
    for bad in (1, 0.0, "opponents", None):
        with pytest.raises(ValueError, match=r"proponents=.* must be True or False"):
            influence.top_k(scores, 2, proponents=bad)
    assert torch.equal(
        influence.top_k(scores, 2, proponents=np.True_).indices,
        influence.top_k(scores, 2, proponents=True).indices,
    )


def test_option_lists_take_any_iterable_of_ids(influence_case):
    """``special_token_ids`` as a range or a dict's keys, as before the checks: the same scores."""
    model, checkpoints, train_t, test_t = influence_case
    as_list = influence.scores(
        "tracin-we-noc", model, checkpoints, train_t, test_t, special_token_ids=[1, 2]
    )
    for ids in (range(1, 3), {1: "a", 2: "b"}.keys(), (i for i in (1, 2))):
        again = influence.scores(
            "tracin-we-noc", model, checkpoints, train_t, test_t, special_token_ids=ids
        )
        assert torch.equal(again, as_list)
