"""The parameter boundary: typed configs, literal strings, presets, and papermill runs by hand."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from tracin_we import preflight as pf
from tracin_we import reproduce as rp
from tracin_we.core.data import DataConfig
from tracin_we.core.params import build_config, check_types, flat_fields, from_params
from tracin_we.experiments.deletion import DeletionConfig
from tracin_we.experiments.fixing import FixingConfig
from tracin_we.training.recipe import TrainConfig
from tracin_we.training.train import train

SMALL = {"n_train": 100, "n_test": 40}  # so that ks/k/n_test_points validate


@pytest.mark.parametrize(
    ("cls", "params", "message"),
    [
        (DataConfig, {"n_train": "64"}, "n_train='64' has type str; n_train must be an int"),
        (DataConfig, {"n_train": 2.5}, "n_train=2.5 has type float; n_train must be an int"),
        (DataConfig, {"n_val": True}, "n_val=True has type bool; n_val must be an int"),
        (DataConfig, {"data_dir": 3}, "data_dir=3 has type int; data_dir must be a str or None"),
        (DataConfig, {"label_noise": "0.2"}, "label_noise='0.2' has type str; label_noise must"),
        (TrainConfig, {"epochs": True}, "epochs=True has type bool; epochs must be an int"),
        (TrainConfig, {"pretrained": "no"}, "pretrained='no' has type str; pretrained must be Tr"),
        (TrainConfig, {"pretrained": 1}, "pretrained=1 has type int; pretrained must be True or"),
        (TrainConfig, {"lr": True}, "lr=True has type bool; lr must be a float"),
        (TrainConfig, {"model": 3}, "model=3 has type int; model must be a str"),
        (TrainConfig, {"max_grad_norm": "1"}, "max_grad_norm='1' has type str; max_grad_norm mu"),
        (TrainConfig, {"checkpoint_epochs": [1, 2.0]}, "checkpoint_epochs must be a list of int"),
        (TrainConfig, {"checkpoint_epochs": 2}, "checkpoint_epochs=2 has type int"),
        (TrainConfig, {"data": {"n_train": 5}}, "data={'n_train': 5} has type dict; data must be"),
        (DeletionConfig, {"methods": "tracin-we"}, "methods must be a list of str (one value: "),
        (DeletionConfig, {"ks": (5, "6")}, "ks=(5, '6') has type tuple; ks must be a list of int"),
        (DeletionConfig, {"seeds": 3}, "seeds=3 has type int; seeds must be a list of int"),
        (DeletionConfig, {"n_test_points": 4.0}, "n_test_points=4.0 has type float"),
        (DeletionConfig, {"method_options": {"tracin-we": 3}}, "a dict of str to dict"),
        (DeletionConfig, {"ci": "0.9"}, "ci='0.9' has type str; ci must be a float"),
        (FixingConfig, {"p_range": [0.3]}, "p_range must be a list of 2 values (float, float)"),
        (FixingConfig, {"k": 5.0}, "k=5.0 has type float; k must be an int"),
        (FixingConfig, {"n_workers": 1.5}, "n_workers=1.5 has type float; n_workers must be an"),
        (FixingConfig, {"fixes": "remove"}, "fixes='remove' has type str; fixes must be a list"),
    ],
)
def test_each_wrong_type_is_an_error_naming_the_parameter(cls, params, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _construct(cls, params)


def _construct(cls: type, params: dict):
    """``cls(**params)`` through its constructor, with nested configs small enough to validate."""
    if cls is DataConfig:
        return DataConfig(**(SMALL | params))
    if cls is TrainConfig:
        return TrainConfig(**({"data": DataConfig(**SMALL)} | params))
    return cls(train=TrainConfig(data=DataConfig(**SMALL)), **params)


def test_right_types_pass_and_ints_are_floats():
    config = TrainConfig(data=DataConfig(**SMALL), lr=1, max_grad_norm=None, checkpoint_epochs=[5])
    assert config.lr == 1 and config.checkpoint_epochs == (5,)
    check_types(config)
    fixing = FixingConfig(train=config, k=5, p_range=[0, 1], n_workers=None)
    assert fixing.p_range == (0, 1)


def test_literal_strings_are_parsed_once_at_the_boundary():
    config = DeletionConfig.from_params(
        n_train="100",
        n_test=40,
        checkpoint_epochs="[1, 2]",
        epochs="2",
        lr="1e-3",
        pretrained="False",
        max_grad_norm="None",
        ks=" [5, 10] ",
        seeds="(0,)",
        n_test_points=4,
        methods="['tracin-we', 'random']",
        method_options="{'tracin-we': {'batch_size': 8}}",
        data_dir="None",  # a str field keeps the string (papermill -p already turns None into None)
    )
    data = config.train.data
    assert (data.n_train, config.train.checkpoint_epochs, config.train.epochs) == (100, (1, 2), 2)
    assert config.train.lr == 1e-3 and config.train.pretrained is False
    assert config.train.max_grad_norm is None and data.data_dir == "None"
    assert (config.ks, config.seeds, config.methods) == ((5, 10), (0,), ("tracin-we", "random"))
    assert config.method_options == {"tracin-we": {"batch_size": 8}}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"methods": "tracin-we"}, r"methods='tracin-we' has type str.*methods=\['tracin-we'\]"),
        ({"pretrained": "no"}, "pretrained='no' has type str; pretrained must be True or False"),
        ({"n_train": "sixty"}, "n_train='sixty' has type str; n_train must be an int"),
        ({"checkpoint_epochs": "[1, 2"}, r"checkpoint_epochs='\[1, 2' has type str"),
    ],
)
def test_strings_that_are_not_the_wanted_literal_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        DeletionConfig.from_params(**(SMALL | {"ks": [5], "n_test_points": 4} | params))


def test_a_name_goes_to_every_config_that_declares_it():
    config = TrainConfig.from_params(seed=7, n_train=50)
    assert config.seed == config.data.seed == 7 and config.data.n_train == 50
    assert "seed" in flat_fields(DeletionConfig) and "train" not in flat_fields(DeletionConfig)
    with pytest.raises(ValueError, match=r"unknown parameters \['n_trian'\] for DeletionConfig"):
        from_params(DeletionConfig, {"n_trian": 64})


def test_build_config_takes_exactly_the_fields_in_scope():
    scope = {
        "n_train": 100,
        "n_test": 40,
        "ks": [5],
        "n_test_points": 4,
        "seeds": [3],
        "train": train,  # the function a notebook imports: a nested config's name, never taken
        "per_class": 2,  # a notebook-only parameter: ignored
        "json": json,
        "label_noise": 0.2,
    }
    config = build_config(DeletionConfig, scope, methods=["tracin-we"], label_noise=0.0)
    assert config.train.data.n_train == 100 and config.seeds == (3,)
    assert config.methods == ("tracin-we",) and config.train.data.label_noise == 0.0
    assert config.n_retrains == 1 * (1 + 4 * 1 * 2 * 1)
    with pytest.raises(ValueError, match=r"overrides \['per_clas'\] are not parameters"):
        build_config(DeletionConfig, scope, per_clas=1)
    with pytest.raises(ValueError, match=r"tokenizer=<.*> has type"):  # a stale object in scope
        build_config(TrainConfig, {"tokenizer": object()})


def test_fixing_n_retrains():
    config = FixingConfig.from_params(**SMALL, k=5, n_mistakes=3, seeds=[0, 1])
    assert config.n_retrains == 2 * (1 + 3 * 2 * 2)


# --- presets --------------------------------------------------------------------------------


def _write(path: Path, preset: dict) -> Path:
    path.write_text(yaml.safe_dump(preset))
    return path


@pytest.mark.parametrize("name", rp.available_presets())
def test_builtin_presets_pass_the_checks(name):
    preset = rp.load_preset(name)
    assert "common" in preset


@pytest.mark.parametrize(
    ("preset", "message"),
    [
        ({"common": {"n_trian": 64}}, r"common: \['n_trian'\] not a parameter of any notebook"),
        ({"03_case_deletion": {"k": 5}}, r"03_case_deletion: \['k'\] not a parameter of 03_case"),
        ({"03_case_deletoin": {"ks": [5]}}, "section '03_case_deletoin' is not 'common'"),
        ({"common": {"run_dir": "/tmp/x"}}, r"\['run_dir'\] are set by reproduce"),
        ({"common": [1, 2]}, "section 'common' must be a mapping"),
        # Types too, before the first notebook, not when the one that reads them starts:
        ({"08_lds": {"methods": "tracin-we"}}, "methods='tracin-we' has type str; methods must"),
        ({"common": {"lr": "1e-3"}}, "lr='1e-3' has type str.*write 0.001"),
        ({"common": {"n_train": 1.5}}, "n_train=1.5 has type float; n_train must be int"),
        ({"common": {"pretrained": 1}}, "pretrained=1 has type int; pretrained must be bool"),
    ],
)
def test_a_bad_preset_is_refused_before_anything_runs(preset, message, tmp_path, monkeypatch):
    monkeypatch.setattr(rp.papermill, "execute_notebook", _must_not_run)
    path = _write(tmp_path / "mine.yaml", preset)
    with pytest.raises(ValueError, match=message):
        rp.reproduce(str(path), runs=tmp_path / "runs")


def _must_not_run(*args, **kwargs):
    raise AssertionError("a notebook ran")


def test_preset_values_of_a_compatible_type_pass(tmp_path):
    """An int where the default is a float, a null anywhere, a tuple-like list: accepted."""
    preset = {
        "common": {"lr": 1, "label_names": ["a", "b"], "n_val": None},
        "03_case_deletion": {"ks": [5, 10]},
    }
    assert rp.load_preset(_write(tmp_path / "mine.yaml", preset))["common"]["lr"] == 1


def test_template_sections_are_ignored(tmp_path):
    preset = {"x-recipe": {"anything": 1}, "common": {"n_train": 64}}
    assert rp.load_preset(_write(tmp_path / "mine.yaml", preset))["common"] == {"n_train": 64}


@pytest.mark.parametrize("name", ["../../x", "../presets/smoke", "a/b", "/etc/passwd", "..", ""])
def test_preset_names_cannot_leave_presets(name):
    with pytest.raises(ValueError, match="is neither a preset name"):
        rp.preset_path(name)


def test_preset_paths_and_where_they_write(tmp_path):
    assert rp.preset_path("smoke") == rp.PRESETS / "smoke.yaml"
    assert rp.output_dirs("default") == (rp.REPO / "runs" / "default", rp.REPO / "figures")
    pretrained = (rp.REPO / "runs" / "pretrained", rp.REPO / "figures" / "pretrained")
    assert rp.output_dirs("pretrained") == pretrained
    mine = _write(tmp_path / "mine.yaml", {"common": {"n_train": 64}})
    assert rp.preset_path(str(mine)) == mine
    assert rp.output_dirs(str(mine)) == (rp.REPO / "runs/mine", rp.REPO / "runs/mine/figures")
    with pytest.raises(ValueError, match="no such file"):
        rp.preset_path(str(tmp_path / "absent.yaml"))
    impostor = _write(tmp_path / "default.yaml", {"common": {}})
    with pytest.raises(ValueError, match="has the name of the built-in preset 'default'"):
        rp.preset_path(str(impostor))
    with pytest.raises(ValueError, match=r"preset='huge' is unknown; allowed:"):
        rp.preset_path("huge")


def test_params_for_gives_what_reproduce_gives(tmp_path):
    preset = rp.load_preset("default")
    run_dir, figures_dir = rp.output_dirs("default")
    notebook = pf.NOTEBOOKS / "03_case_deletion.ipynb"
    expected = rp.notebook_parameters(preset, notebook, run_dir, figures_dir)
    assert rp.params_for("default", "03") == expected
    assert expected["ks"] == preset["03_case_deletion"]["ks"] and expected["model"] == "cnn"
    assert expected["metrics_path"] == str(run_dir / "metrics" / "03_case_deletion.json")
    # The smoke preset overrides no default: each notebook gets only where to write.
    assert set(rp.params_for("smoke", "03")) == set(pf.OUTPUTS)
    with pytest.raises(ValueError, match="matches"):
        rp.params_for("smoke", "0")


# --- papermill by hand (slow: each starts a kernel and trains a tiny model) --------------------


def _papermill(notebook: Path, output: Path, *args: str, cwd: Path) -> None:
    command = [sys.executable, "-m", "papermill", str(notebook), str(output), "-k", "python3"]
    subprocess.run([*command, "--no-progress-bar", *args], cwd=cwd, check=True, timeout=600)


@pytest.mark.slow
def test_params_for_round_trip_through_papermill(ag_news_dir, tmp_path):
    """``reproduce --params-for`` → flat YAML → ``papermill -f``, plus a list given as a string
    with ``-p``: the values reach the config (not the notebook's defaults)."""
    preset = rp.load_preset("smoke")
    preset["01_train"] = {"epochs": 3, "checkpoint_epochs": [1, 3]}
    mine = _write(tmp_path / "roundtrip.yaml", preset)
    flat = subprocess.run(
        [sys.executable, "-m", "tracin_we.reproduce", "--preset", str(mine), "--params-for", "01"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    params = yaml.safe_load(flat)
    assert params["epochs"] == 3 and "n_train" not in params  # the notebook's default stays
    assert params["run_dir"] == str(rp.REPO / "runs" / "roundtrip")
    (tmp_path / "p.yaml").write_text(flat)
    out = tmp_path / "out"
    overrides = ["-p", "checkpoint_epochs", "[2]"]  # arrives as the string "[2]"
    for name, value in [("run_dir", out), ("figures_dir", out / "figures")]:
        overrides += ["-p", name, str(value)]
    overrides += ["-p", "metrics_path", str(out / "metrics.json")]
    _papermill(
        pf.NOTEBOOKS / "01_train.ipynb",
        tmp_path / "01.ipynb",
        "-f",
        str(tmp_path / "p.yaml"),
        *overrides,
        cwd=rp.REPO,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3 and metrics["n_checkpoints"] == 1
    assert (out / "figures" / "01_training_curves.png").is_file()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_direct_papermill_run_leaves_git_status_clean(ag_news_dir, tmp_path):
    """``papermill notebooks/01_train.ipynb out.ipynb`` with the notebook's own defaults, in a
    repository holding the committed notebook, figure and .gitignore: it writes under runs/ only."""
    repo = tmp_path / "repo"
    for relative in (".gitignore", "notebooks/01_train.ipynb", "figures/01_training_curves.png"):
        (repo / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(rp.REPO / relative, repo / relative)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "committed"], cwd=repo, check=True)
    _papermill(Path("notebooks/01_train.ipynb"), tmp_path / "out.ipynb", cwd=repo)
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert status == ""
    metrics = json.loads((repo / "runs/notebook/metrics/01_train.json").read_text())
    assert metrics["epochs_run"] == 2  # the smoke size, not the paper's 10 epochs
    assert (repo / "runs/notebook/figures/01_training_curves.png").is_file()
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)


def test_a_flattened_asdict_round_trips_with_its_derived_fields():
    """``asdict`` holds DataConfig's derived fields (vocab_size, pad_token_id); given back as flat
    parameters they are recomputed, not refused."""
    from dataclasses import asdict

    config = TrainConfig.from_params(model="cnn", n_train=100, epochs=2, checkpoint_epochs=[2])
    flat = asdict(config)
    flat |= flat.pop("data")
    assert {"vocab_size", "pad_token_id"} <= set(flat)
    assert TrainConfig.from_params(**flat) == config


def test_runs_dir_takes_every_output_and_the_cache(tmp_path, monkeypatch):
    """``--runs DIR``: executed notebooks, metrics, figures (the default preset's too) and the
    cache the notebooks' kernels inherit all go under DIR; the repository gets nothing."""
    monkeypatch.delenv("TRACIN_WE_CACHE")
    seen = []

    def execute(notebook, output, parameters, **kwargs):
        seen.append((parameters, os.environ.get("TRACIN_WE_CACHE")))
        Path(output).write_text("{}")

    monkeypatch.setattr(rp.papermill, "execute_notebook", execute)
    monkeypatch.setattr(rp, "run_report", lambda run_dir, name: None)
    rp.main(["--preset", "default", "--only", "01", "--runs", str(tmp_path)])
    ((params, cache),) = seen
    assert cache == str(tmp_path / "cache")
    assert params["run_dir"] == str(tmp_path / "default")
    assert params["figures_dir"] == str(tmp_path / "default" / "figures")
    assert (tmp_path / "default" / "notebooks" / "01_train.ipynb").is_file()
    assert "TRACIN_WE_CACHE" not in os.environ  # restored after the run
    monkeypatch.chdir(tmp_path)  # a relative DIR is the caller's, not the repository's
    rp.main(["--preset", "smoke", "--only", "01", "--runs", "relative"])
    params, cache = seen[-1]
    assert cache == str(tmp_path / "relative" / "cache")
    assert params["run_dir"] == str(tmp_path / "relative" / "smoke")
    monkeypatch.setattr(rp.papermill, "execute_notebook", _must_not_run)  # a failing notebook
    with pytest.raises(AssertionError, match="a notebook ran"):
        rp.reproduce("smoke", only=["01"], runs=tmp_path)
    assert "TRACIN_WE_CACHE" not in os.environ  # restored after a failure too
    monkeypatch.setattr(rp.papermill, "execute_notebook", execute)
    monkeypatch.setenv("TRACIN_WE_CACHE", str(tmp_path / "mine"))  # a cache named wins
    rp.main(["--preset", "smoke", "--only", "01", "--runs", str(tmp_path)])
    assert seen[-1][1] == str(tmp_path / "mine")


def test_a_preset_names_the_notebooks_it_runs(tmp_path):
    preset = rp.load_preset("pretrained")
    names = [nb.name[:2] for nb in rp.preset_notebooks(preset, None)]
    assert names == ["01", "02", "03", "06", "07", "08"]
    assert [nb.name[:2] for nb in rp.preset_notebooks(preset, ["02"])] == ["02"]  # --only wins
    assert len(rp.preset_notebooks(rp.load_preset("default"), None)) == len(rp.notebook_paths())
    for bad, message in [("01", "must be a list"), (["01", 2], "must be a list"), (["42"], "42")]:
        with pytest.raises(ValueError, match=message):
            rp.load_preset(_write(tmp_path / "mine.yaml", {"notebooks": bad, "common": {}}))
