"""Every selected notebook's parameters are checked before the first notebook runs, with the
checks the notebook itself runs; presets are strict YAML. A property test throws random presets
at the loader: each loads and passes, or fails with a ``ValueError`` naming the preset file."""

from __future__ import annotations

import ast
import json
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracin_we import preflight as pf
from tracin_we import reproduce as rp
from tracin_we.preflight import CONTRACTS, RUNTIME_CHECKS, check_notebook, notebook_defaults

SMOKE = yaml.safe_load((rp.PRESETS / "smoke.yaml").read_text())


def _must_not_run(*args, **kwargs):
    raise AssertionError("a notebook ran")


def _preset(tmp_path: Path, changes: dict[str, dict]) -> Path:
    """The smoke preset with ``changes`` merged into its sections, written as mine.yaml."""
    preset = {section: dict(values) for section, values in SMOKE.items()}
    for section, values in changes.items():
        preset.setdefault(section, {}).update(values)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


# Each notebook's code holds to its contract: the config it builds, the checks it calls.


def _calls(notebook: Path) -> list[ast.Call]:
    cells = json.loads(notebook.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return [node for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Call)]


@pytest.mark.parametrize("notebook", rp.notebook_paths(), ids=lambda p: p.stem)
def test_each_notebook_builds_and_checks_what_its_contract_says(notebook):
    contract = CONTRACTS[notebook.stem]
    calls = _calls(notebook)
    builds = [c for c in calls if isinstance(c.func, ast.Name) and c.func.id == "build_config"]
    if contract.config is None:
        assert not builds
    else:
        (build,) = builds
        assert ast.unparse(build.args[0]) == contract.config.__name__
        overrides = {k.arg: ast.literal_eval(k.value) for k in build.keywords}
        assert overrides == dict(contract.overrides)
    called = {c.func.id for c in calls if isinstance(c.func, ast.Name)}
    for check in contract.checks:
        assert check.__name__ in called, f"{notebook.stem} does not call {check.__name__}"


def test_every_notebook_has_a_contract():
    assert sorted(CONTRACTS) == [nb.stem for nb in rp.notebook_paths()]


@pytest.mark.parametrize("notebook", rp.notebook_paths(), ids=lambda p: p.stem)
def test_each_notebooks_defaults_pass_its_checks(notebook):
    check_notebook(notebook, {})  # a bare papermill run uses these


# The late checks, and their class: caught before the first notebook, naming it.

LATE = [
    ({"03_case_deletion": {"methods": ["tracin-we", "tracin-wee"]}}, r"03_case_deletion: methods="),
    ({"02_influence": {"k": 100000}}, r"02_influence: k=100000 must be an integer in \[1, 120\]"),
    (
        {"02_influence": {"per_class": 3}},
        r"02_influence: per_class=3 must be an integer in \[1, 2\]",
    ),
    ({"common": {"checkpoint_epochs": [1, 3]}}, r"01_train: checkpoint_epochs="),
    ({"03_case_deletion": {"ks": [120]}}, r"03_case_deletion: ks=\[120\].*n_train=120"),
    ({"03_case_deletion": {"n_test_points": 41}}, r"03_case_deletion: n_test_points=41"),
    ({"04_no_overlap": {"candidate_fraction": 0.01}}, r"04_no_overlap: ks=\[5\].*1 candidates"),
    ({"04_no_overlap": {"candidate_fraction": 1.5}}, r"04_no_overlap: candidate_fraction=1.5"),
    ({"04_no_overlap": {"torch_threads": 0}}, r"04_no_overlap: torch_threads=0"),
    ({"06_cancellation": {"variant": "C_l3"}}, r"06_cancellation: variant='C_l3' is unknown"),
    ({"07_layers_and_aggregation": {"fraction": 2.0}}, r"07_layers_and_aggregation: fraction=2.0"),
    (
        {"07_layers_and_aggregation": {"label_noise": 1.5}},
        r"07_layers_and_aggregation: label_noise",
    ),
    ({"common": {"device": "gpu"}}, r"01_train: device='gpu' is not a torch device"),
    ({"00_tracin_we_by_hand": {"pair": 4}}, r"00_tracin_we_by_hand: pair=4 must be an integer in"),
    ({"00_tracin_we_by_hand": {"checkpoint_steps": [5, 11]}}, r"checkpoint_steps=\[5, 11\]"),
    ({"00_tracin_we_by_hand": {"labels": [0, 1]}}, r"labels=\[0, 1\] must be one .* per sentence"),
    ({"05_fixing": {"k": 0}}, r"05_fixing: k=0"),
    ({"08_lds": {"n_subsets": 1}}, r"08_lds: n_subsets=1"),
    ({"09_pretraining_influence": {"n_test_points": 0}}, r"09_pretraining_influence: n_test_"),
    # null passes the type check wherever it may stand; checks that never expected it say so.
    ({"04_no_overlap": {"candidate_fraction": None}}, r"04_no_overlap: .*wrong type"),
    ({"00_tracin_we_by_hand": {"labels": None}}, r"00_tracin_we_by_hand: .*wrong type"),
]


@pytest.mark.parametrize(("changes", "message"), LATE, ids=lambda v: str(v)[:40])
def test_a_bad_value_fails_before_the_first_notebook_runs(changes, message, tmp_path, monkeypatch):
    monkeypatch.setattr(rp.papermill, "execute_notebook", _must_not_run)
    path = _preset(tmp_path, changes)
    with pytest.raises(ValueError, match=message) as error:
        rp.reproduce(str(path), runs=tmp_path / "runs")
    assert str(error.value).startswith(f"{path}: ")
    assert not (tmp_path / "runs").exists()  # nothing written, not even the report


def test_only_checks_the_selected_notebooks_first(tmp_path, monkeypatch, capsys):
    """``--only 01 03`` with a typo in 03's methods stops before 01 trains, as a clean CLI
    error (no traceback) naming the file, the notebook and the parameter."""
    monkeypatch.setattr(rp.papermill, "execute_notebook", _must_not_run)
    path = _preset(tmp_path, {"03_case_deletion": {"methods": ["tracin-we", "tracn-last"]}})
    argv = ["--preset", str(path), "--only", "01", "03", "--runs", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as stop:
        rp.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "03_case_deletion: methods=" in err and "tracn-last" in err and str(path) in err
    assert "Traceback" not in err
    # A bad value in a notebook that is not selected does not stop the others.
    path = _preset(tmp_path, {"08_lds": {"n_subsets": 1}})
    checked = []
    monkeypatch.setattr(rp, "check_notebook", lambda nb, params: checked.append(nb.stem))
    monkeypatch.setattr(rp, "run_notebook", lambda config, nb, *rest: (nb, 0.0))
    rp.reproduce(str(path), only=["01"], runs=tmp_path / "runs")
    assert checked == ["01_train"]


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "tpu", "", "cpu:x"])
def test_device_is_checked_against_this_machine(device):
    import torch

    available = device == "cpu" or (device.startswith("cuda") and torch.cuda.is_available())
    if available:
        RUNTIME_CHECKS["device"](device)
    else:
        with pytest.raises(ValueError, match=rf"device={device!r}"):
            RUNTIME_CHECKS["device"](device)


# Strict YAML: a repeated key and a syntax error name the file and the line.


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("common:\n  lr: 0.1\n  lr: 0.2\n", r"line 3.*key 'lr' is given twice.*lines 2 and 3"),
        ("common:\n  lr: 0.1\ncommon:\n  n_train: 64\n", r"key 'common' is given twice"),
        ("03_case_deletion:\n  ks: [5,\n  seeds: [0]\n", r"mine\.yaml', line \d+, column \d+"),
        ("common: {lr: 0.1\n", r"mine\.yaml', line 2"),
        ("common:\n\tlr: 0.1\n", r"mine\.yaml', line 2, column 1"),
        ("- 1\n- 2\n", r"a preset is a mapping of sections, got list"),
        ("common:\n  ? [1, 2]\n  : 3\n", r"mine\.yaml', line 2.*unhashable"),
    ],
)
def test_yaml_errors_name_the_preset_file_and_line(text, message, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        rp.load_preset(str(path))
    assert str(path) in str(error.value)


def test_yaml_anchors_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "x-cnn: &cnn\n  model: cnn\n  n_train: 120\n"
        "03_case_deletion:\n  <<: *cnn\n  ks: [5]\n"
        "04_no_overlap:\n  <<: *cnn\n  ks: [5]\n"
    )
    assert rp.load_preset(str(path))["04_no_overlap"] == {"model": "cnn", "n_train": 120, "ks": [5]}


def test_a_syntax_error_on_the_command_line_is_one_line_naming_the_file(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("common:\n  lr: [0.1\n")
    with pytest.raises(SystemExit):
        rp.main(["--preset", str(path)])
    err = capsys.readouterr().err
    assert str(path) in err and "line" in err and "Traceback" not in err


# Property: a random preset loads and passes, or is a ValueError naming the file.

# Where the data and model come from is left out: a random name there is a hub download (the
# own-data loader has its own property tests in test_data_properties.py).
ORIGIN = {"dataset", "model", "tokenizer", "data_dir", "dataset_config", "split_names"}
DEFAULTS = {
    name: default
    for nb in rp.notebook_paths()
    for name, default in notebook_defaults(nb).items()
    if name not in ORIGIN | set(pf.OUTPUTS)
}
SECTIONS = ["common", *(nb.stem for nb in rp.notebook_paths())]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(string.printable, max_size=12)
)


def like(default: object) -> st.SearchStrategy:
    """Values near a parameter's default: its own type with edge cases, sometimes any scalar."""
    if isinstance(default, bool):
        near = st.booleans()
    elif isinstance(default, int):
        near = st.integers(-2, 300) | st.sampled_from([2**32, -(2**40)])
    elif isinstance(default, float):
        near = st.floats(-2, 2) | st.sampled_from([0.0, float("nan"), float("inf"), 1e300])
    elif isinstance(default, str):
        near = st.sampled_from(["cpu", "cuda", "sgd", "adam", "C_l2", "joblib", "dask", "x"])
    elif isinstance(default, list):
        inner = like(default[0]) if default else scalars
        near = st.lists(inner, max_size=4)
    else:
        near = scalars
    return st.just(default) | near | scalars


entries = st.sampled_from(sorted(DEFAULTS)).flatmap(
    lambda name: st.tuples(st.just(name), like(DEFAULTS[name]))
)
section_values = st.lists(entries, max_size=4).map(dict)
odd_sections = st.dictionaries(
    st.sampled_from(SECTIONS) | st.just("x-template") | st.text(min_size=1, max_size=6),
    st.dictionaries(st.text(string.ascii_letters + "_", min_size=1, max_size=8), scalars) | scalars,
    max_size=2,
)
sections = st.dictionaries(st.sampled_from(SECTIONS), section_values, max_size=3) | odd_sections


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # tmp_path is only written over
)
@given(preset=sections)
def test_a_random_preset_passes_or_is_an_error_naming_the_file(preset, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(preset))
    try:
        config = rp.load_preset(str(path))
        run_dir, figures_dir = rp.output_dirs(str(path), tmp_path / "runs")
        rp.check_notebooks(config, rp.select_notebooks(None), run_dir, figures_dir, str(path))
    except ValueError as error:
        assert str(error).startswith(str(path)), str(error)


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(text=st.text(max_size=60))
def test_random_text_as_a_preset_loads_or_is_an_error_naming_the_file(text, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    try:
        rp.load_preset(str(path))
    except ValueError as error:
        assert str(path) in str(error), str(error)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"05_fixing": {"damping": 0.0}}, r"05_fixing: damping=0.0 must be > 0"),
        ({"05_fixing": {"n_mistakes": 41}}, r"05_fixing: n_mistakes=41 must be <= n_test=40"),
        ({"03_case_deletion": {"ks": [5, 5]}}, r"03_case_deletion: ks=\[5, 5\].*distinct"),
        ({"09_pretraining_influence": {"n_test_points": 41}}, r"n_test_points=41 must be <="),
    ],
)
def test_ranges_that_failed_late_before_now_fail_first(changes, message, tmp_path, monkeypatch):
    """Checks that each config now makes itself (damping = 0 failed only when scoring, after
    training; repeated ks, too many mistakes or test points only deep in the run)."""
    monkeypatch.setattr(rp.papermill, "execute_notebook", _must_not_run)
    with pytest.raises(ValueError, match=message):
        rp.reproduce(str(_preset(tmp_path, changes)), runs=tmp_path / "runs")
