"""What is written to disk: the manifest and the damaged-file rule, a training run killed with
``kill -9`` (then its partial state bit-flipped), bit flips in every cache, overwrite and stale
temporary files."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tracin_we import influence
from tracin_we.core.inputs import model_inputs
from tracin_we.core.persistence import MANIFEST, CheckpointError, Folder, file_sha256, write_json
from tracin_we.core.result_folders import claim_result_folder
from tracin_we.experiments import deletion as deletion_module
from tracin_we.experiments.deletion import DeletionConfig, load_deletion, run_deletion
from tracin_we.influence import embedding
from tracin_we.training.recipe import TrainConfig
from tracin_we.training.retrain import RetrainJob, RetrainStore, retrain_cached
from tracin_we.training.train import train

REPO = Path(__file__).resolve().parents[1]
TEXT = {"capture_output": True, "text": True, "check": True}


def flip_bit(path: Path, tensor: Callable[[dict], torch.Tensor] | None = None) -> None:
    """Flip one bit in the middle of the file, or of the bytes of ``tensor(content)``: a damage
    that ``torch.load`` does not notice (a weight changes by a few ulps or more)."""
    raw = bytearray(path.read_bytes())
    at, size = 0, len(raw)
    if tensor is not None:
        needle = tensor(torch.load(path, weights_only=True)).contiguous().numpy().tobytes()
        at, size = raw.find(needle), len(needle)
        assert at >= 0
    raw[at + size // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def classifier_weight(content: dict) -> torch.Tensor:
    return content["state_dict"]["classifier.weight"]


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def damaged_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]


# The manifest and the damaged-file rule.


def test_folder_records_and_verifies_what_it_writes(tmp_path, caplog):
    folder = Folder(tmp_path)
    sha = folder.save_torch("a.pt", {"x": torch.arange(1000.0)})
    folder.write_json("b.json", {"k": 1})
    assert sha == file_sha256(tmp_path / "a.pt")
    assert set(Folder(tmp_path).records()) == {"a.pt", "b.json"}  # read back from the manifest
    assert torch.equal(folder.load_torch("a.pt", recompute=False)["x"], torch.arange(1000.0))
    flip_bit(tmp_path / "a.pt", lambda content: content["x"])
    with pytest.raises(CheckpointError, match=r"a\.pt.* is damaged .*sha256 differs.*delete it"):
        folder.load_torch("a.pt", recompute=False)
    with caplog.at_level(logging.WARNING):
        assert folder.load_torch("a.pt", recompute=True) is None  # discarded for recomputing
    assert not (tmp_path / "a.pt").exists() and damaged_warnings(caplog)
    (tmp_path / "c.json").write_text("{}")  # not written by the project: no record
    with pytest.raises(CheckpointError, match="no record of it"):
        folder.read_json("c.json", recompute=False, remedy="delete the cache")
    assert folder.read_json("missing.json", recompute=False) is None


def test_written_files_get_the_mode_open_gives_not_private(tmp_path):
    """mkstemp makes its temporary file 0600; a result renamed from it stays readable by others
    as a file written with open() would be."""
    umask = os.umask(0o022)
    os.umask(umask)
    folder = Folder(tmp_path)
    folder.save_torch("a.pt", {"x": torch.zeros(2)})
    write_json(tmp_path / "b.json", {"k": 1})
    (tmp_path / "c.txt").write_text("")
    for name in ("a.pt", "b.json", "c.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_manifest_line_cut_short_is_skipped(tmp_path):
    folder = Folder(tmp_path)
    folder.write_json("a.json", [1])
    with open(tmp_path / MANIFEST, "a") as manifest:
        manifest.write('{"file": "b.json", "sha')  # a writer killed mid-line
    assert Folder(tmp_path).read_json("a.json", recompute=False) == [1]


def test_stale_temporary_files_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **TEXT)
    host = socket.gethostname()
    stale = tmp_path / f".resume.pt.{dead.stdout.strip()}@{host}.abcd1234.tmp"
    untagged = tmp_path / ".resume.pt.k2j4h5g6.tmp"  # an older version's, of a recorded file
    live = tmp_path / f".epoch1.pt.{os.getpid()}@{host}.abcd1234.tmp"
    user = tmp_path / ".notes.tmp"  # not one of ours
    backup = tmp_path / ".backup.20240101.tmp"  # the untagged shape, of no recorded file: a user's
    Folder(tmp_path).write("resume.pt", b"state")
    for path in (stale, untagged, live, user, backup):
        path.write_bytes(b"partial")
    removed = Folder(tmp_path).remove_stale_tmp()
    assert sorted(removed) == sorted([stale, untagged])
    assert live.exists() and user.exists() and backup.exists()
    assert Folder(tmp_path).foreign() == [".backup.20240101.tmp", ".notes.tmp"]


# A training run killed with kill -9, then its partial state damaged.

KILLED_RUN = textwrap.dedent(
    """
    import json, sys, time
    from tracin_we.core import persistence
    from tracin_we.training import cached_run, train as train_module
    from tracin_we.training.recipe import TrainConfig

    params, run_dir, hang = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    real_fit, real_write = cached_run.fit, persistence.atomic_write

    def fit(*args, on_epoch, **kwargs):  # hang once epoch 2 is saved: killed there
        def after(epoch, *rest):
            on_epoch(epoch, *rest)
            if hang == "after epoch 2" and epoch == 2:
                print("ready", flush=True)
                time.sleep(600)
        return real_fit(*args, on_epoch=after, **kwargs)

    resume_writes = []

    def atomic_write(path, write):  # or hang while writing epoch 2's resume.pt
        def slow(tmp):
            write(tmp)
            resume_writes.extend([1] if path.name == "resume.pt" else [])
            if hang == "writing resume.pt" and len(resume_writes) == 2:
                print("ready", flush=True)
                time.sleep(600)
        real_write(path, slow)

    cached_run.fit, persistence.atomic_write = fit, atomic_write
    train_module.torch.set_num_threads(1)
    train_module.train(TrainConfig.from_params(**params), run_dir=run_dir, progress=False)
    """
)


def kill_during_training(config: TrainConfig, run_dir: Path, hang: str) -> None:
    """Train ``config`` in a subprocess and ``kill -9`` it at ``hang``."""
    params = {k: v for k, v in config.__dict__.items() if k != "data"} | config.data.__dict__
    env = os.environ | {"PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", KILLED_RUN, json.dumps(params), str(run_dir), hang]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as process:
        assert process.stdout.readline().strip() == "ready", "the run ended before its kill"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert not (run_dir / "result.json").exists()


@pytest.mark.parametrize("damaged", ["resume.pt", "epoch1.pt"])
def test_killed_run_with_damaged_state_is_recomputed_not_used(
    train_config, tmp_path, caplog, damaged
):
    config = train_config(checkpoint_epochs=[1, 2, 3])
    reference = train(config, run_dir=tmp_path / "reference", progress=False)
    run_dir = tmp_path / "run"
    kill_during_training(config, run_dir, "after epoch 2")
    flip_bit(run_dir / damaged, classifier_weight)
    with caplog.at_level(logging.WARNING):
        resumed = train(config, run_dir=run_dir, progress=False)
    assert any(damaged in m for m in damaged_warnings(caplog))  # logged
    for ours, theirs in zip(
        [*resumed.checkpoints, resumed.final],
        [*reference.checkpoints, reference.final],
        strict=True,
    ):
        assert file_sha256(ours.path) == ours.sha256  # result.json records the intact file
        assert states_equal(
            torch.load(ours.path, weights_only=True)["state_dict"],
            torch.load(theirs.path, weights_only=True)["state_dict"],
        )
    assert states_equal(
        dict(resumed.checkpoint_pairs()[0][0]), dict(reference.checkpoint_pairs()[0][0])
    )


def test_killed_write_leaves_no_temporary_file_after_the_rerun(train_config, tmp_path):
    config = train_config()
    reference = train(config, run_dir=tmp_path / "reference", progress=False)
    run_dir = tmp_path / "run"
    kill_during_training(config, run_dir, "writing resume.pt")
    assert list(run_dir.glob(".resume.pt.*.tmp"))  # the killed writer's
    resumed = train(config, run_dir=run_dir, progress=False)
    assert not list(run_dir.glob(".*.tmp"))
    assert states_equal(
        torch.load(resumed.final.path, weights_only=True)["state_dict"],
        torch.load(reference.final.path, weights_only=True)["state_dict"],
    )


def test_damaged_result_json_is_refused_naming_it(train_config, tmp_path):
    config = train_config(epochs=1, checkpoint_epochs=[1])
    result = train(config, run_dir=tmp_path / "run", progress=False)
    path = result.run_dir / "result.json"
    path.write_text(path.read_text()[:-20])  # truncated
    with pytest.raises(CheckpointError, match=r"result\.json.* is damaged.*delete the run folder"):
        train(config, run_dir=tmp_path / "run", progress=False)


# Bit flips in the other caches: detected and recomputed.


def test_gradient_cache_bit_flip_is_recomputed(influence_case, tmp_path, caplog, monkeypatch):
    model, checkpoints, train_t, test_t = influence_case
    passes = []
    grads = embedding.embedding_grads
    monkeypatch.setattr(embedding, "embedding_grads", lambda *a: passes.append(1) or grads(*a))
    options = dict(cache_dir=tmp_path, batch_size=4)
    fresh = influence.scores("tracin-we", model, checkpoints, train_t, test_t, **options)
    files = sorted((tmp_path / "gradients").glob("*.pt"))
    assert len(files) == 2
    flip_bit(files[0], lambda content: content["features"]["rows"])
    before = len(passes)
    with caplog.at_level(logging.WARNING):
        again = influence.scores("tracin-we", model, checkpoints, train_t, test_t, **options)
    assert torch.equal(again, fresh)
    assert len(passes) - before == 2 + 2  # the test set's 2 checkpoints + 2 train batches again
    assert damaged_warnings(caplog) and files[0].name in damaged_warnings(caplog)[0]
    assert Folder(tmp_path / "gradients").read(files[0].name, recompute=False) is not None


def test_retrain_store_bit_flip_is_retrained(tmp_path, caplog, token_splits):
    config = TrainConfig.from_params(
        model="cnn", n_train=32, n_test=16, max_length=12, epochs=1, batch_size=8,
        checkpoint_epochs=[1],
    )  # fmt: skip
    train_t, test_t = (model_inputs(token_splits[k]) for k in ("train", "test"))
    jobs = [RetrainJob(0, ()), RetrainJob(0, (1, 2))]
    options = dict(cache=tmp_path, backend="sequential", progress=False)
    first = retrain_cached(config, jobs, train_t, test_t, **options)
    path = RetrainStore(config, train_t, test_t, tmp_path).path(jobs[1])
    flip_bit(path, lambda content: content["probabilities"])
    with caplog.at_level(logging.WARNING):
        again = retrain_cached(config, jobs, train_t, test_t, **options)
    assert (again.n_trained, again.n_reused) == (1, 1)
    assert torch.equal(again.probabilities, first.probabilities)
    assert damaged_warnings(caplog)


@pytest.fixture
def tiny_deletion(tmp_path, token_splits):
    """``tiny_deletion(**kw)``: a one-method deletion sweep on synthetic tokens, in seconds."""
    config = DeletionConfig(
        train=TrainConfig.from_params(
            model="cnn", n_train=32, n_val=8, n_test=16, max_length=12, epochs=1, batch_size=8,
            checkpoint_epochs=[1],
        ),
        methods=("random",), ks=(3,), n_test_points=2, seeds=(0,), backend="sequential",
        n_bootstrap=10,
    )  # fmt: skip
    return lambda **kw: run_deletion(config, token_splits, cache=tmp_path, progress=False, **kw)


def test_damaged_deletion_table_is_refused_naming_it(tiny_deletion):
    result = tiny_deletion()
    assert set(load_deletion(result.out_dir)) >= {"config", "deletion", "auc_del"}
    table = result.out_dir / "auc_del.csv"
    table.write_text(table.read_text().replace("random", "rAndom"))
    with pytest.raises(CheckpointError, match=r"auc_del\.csv.* is damaged.*rerun run_deletion"):
        load_deletion(result.out_dir)


# overwrite=True removes what the project wrote, and nothing else.


def test_overwrite_refuses_a_folder_with_foreign_files(train_config, tmp_path):
    run_dir = tmp_path / "named"
    train(train_config(epochs=1, checkpoint_epochs=[1]), run_dir=run_dir, progress=False)
    (run_dir / "notes.txt").write_text("mine")
    (run_dir / "plots").mkdir()
    ours = sorted(p.name for p in run_dir.iterdir())
    other = train_config(epochs=2, checkpoint_epochs=[2])
    with pytest.raises(CheckpointError, match=r"notes\.txt.*plots/.*nothing was deleted"):
        train(other, run_dir=run_dir, overwrite=True, progress=False)
    assert sorted(p.name for p in run_dir.iterdir()) == ours
    assert (run_dir / "notes.txt").read_text() == "mine"
    (run_dir / "notes.txt").unlink()
    (run_dir / "plots").rmdir()
    result = train(other, run_dir=run_dir, overwrite=True, progress=False)
    assert [c.epoch for c in result.checkpoints] == [2]
    assert not (run_dir / "epoch1.pt").exists()


# Confined to its own folder: hostile manifests are never followed, foreign files never replaced.

HOSTILE_NAMES = ["../victim.txt", "sub/../../victim.txt", "..", ".", "", "a\\b", "x\0y"]


@pytest.mark.parametrize("name", [*HOSTILE_NAMES, "ABSOLUTE"])
def test_a_manifest_naming_a_path_outside_its_folder_is_damage_never_followed(
    tmp_path, caplog, name
):
    folder_path, victim = tmp_path / "run", tmp_path / "victim.txt"
    victim.write_text("the user's")
    Folder(folder_path).write_json("config.json", {"k": 1})
    name = str(victim) if name == "ABSOLUTE" else name
    with open(folder_path / MANIFEST, "a") as manifest:
        manifest.write(json.dumps({"file": name, "sha256": file_sha256(victim)}) + "\n")
    folder = Folder(folder_path)
    with caplog.at_level(logging.WARNING):
        assert set(folder.records()) == {"config.json"}  # the hostile record is not a record
    assert any("outside its folder" in r.getMessage() for r in caplog.records)
    with pytest.raises(CheckpointError, match=r"manifest\.jsonl is damaged.*nothing was deleted"):
        folder.clear()
    assert victim.read_text() == "the user's"
    assert (folder_path / "config.json").exists()  # nothing deleted, ours included


def test_a_hostile_manifest_in_a_run_dir_stops_overwrite_before_any_deletion(
    train_config, tmp_path
):
    run_dir, victim = tmp_path / "named", tmp_path / "victim.txt"
    train(train_config(epochs=1, checkpoint_epochs=[1]), run_dir=run_dir, progress=False)
    victim.write_text("the user's")
    with open(run_dir / MANIFEST, "a") as manifest:
        manifest.write(json.dumps({"file": str(victim), "sha256": file_sha256(victim)}) + "\n")
    other = train_config(epochs=2, checkpoint_epochs=[2])
    with pytest.raises(CheckpointError, match=r"run_dir=.*damaged.*nothing was deleted"):
        train(other, run_dir=run_dir, overwrite=True, progress=False)
    assert victim.read_text() == "the user's" and (run_dir / "epoch1.pt").exists()


@pytest.mark.parametrize("name", [*HOSTILE_NAMES, MANIFEST, "ABSOLUTE"])
def test_folder_writes_only_plain_names(tmp_path, name):
    outside = tmp_path / "outside.bin"
    name = str(outside) if name == "ABSOLUTE" else name
    with pytest.raises(ValueError, match="not a plain file name"):
        Folder(tmp_path / "f" / "g").write(name, b"x")
    assert sorted(p.name for p in tmp_path.rglob("*")) == []  # nothing written anywhere


def test_a_file_is_never_in_place_without_its_record(tmp_path, monkeypatch):
    """The record is appended before the rename: a writer killed between the two leaves a record
    without its file (then missing or damaged), never an unrecorded file that would count as the
    user's."""
    folder, seen = Folder(tmp_path), []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(Path(dst).name in Folder(tmp_path).records(reload=True))
        real_replace(src, dst)

    monkeypatch.setattr("tracin_we.core.persistence.os.replace", replace)
    folder.write_json("a.json", [1])
    folder.save_torch("b.pt", {"x": torch.zeros(2)})
    assert seen == [True, True]


def test_a_subfolder_is_foreign_even_when_a_manifest_names_it(tmp_path):
    folder = Folder(tmp_path)
    folder.write_json("a.json", [1])
    (tmp_path / "a.json").unlink()
    (tmp_path / "a.json").mkdir()  # a folder where our file was: not ours to delete
    (tmp_path / "a.json" / "user.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"did not write \(\['a\.json/'\]\)"):
        folder.clear()
    assert (tmp_path / "a.json" / "user.txt").read_text() == "mine"


@pytest.mark.parametrize("overwrite", [False, True])
def test_deletion_never_replaces_the_users_files_in_out_dir(tmp_path, tiny_deletion, overwrite):
    out_dir = tmp_path / "mine"
    out_dir.mkdir()
    for name in ("config.json", "deletion.csv"):
        (out_dir / name).write_text(f"the user's {name}")
    with pytest.raises(CheckpointError, match=r"out_dir=.*did not write.*config\.json") as error:
        tiny_deletion(out_dir=out_dir, overwrite=overwrite)
    assert "damaged" not in str(error.value) and "overwrite=True" not in str(error.value)
    for name in ("config.json", "deletion.csv"):
        assert (out_dir / name).read_text() == f"the user's {name}"
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.json", "deletion.csv"]


def test_overwrite_of_a_result_folder_removes_only_what_tracin_we_wrote(tmp_path, tiny_deletion):
    first = tiny_deletion(out_dir=tmp_path / "out")
    ours = sorted(p.name for p in first.out_dir.iterdir())
    (first.out_dir / "notes.txt").write_text("mine")  # added later: refused, nothing deleted
    with pytest.raises(CheckpointError, match=r"notes\.txt.*nothing was deleted"):
        tiny_deletion(out_dir=first.out_dir, overwrite=True)
    assert sorted(p.name for p in first.out_dir.iterdir()) == sorted([*ours, "notes.txt"])
    (first.out_dir / "notes.txt").unlink()
    tiny_deletion(out_dir=first.out_dir, overwrite=True)
    assert sorted(p.name for p in first.out_dir.iterdir()) == ours


def test_a_symlinked_manifest_is_damage_never_written_through(tmp_path):
    outside, folder_path = tmp_path / "outside.jsonl", tmp_path / "run"
    outside.write_text("")
    folder_path.mkdir()
    (folder_path / MANIFEST).symlink_to(outside)
    folder = Folder(folder_path)
    assert folder.records() == {} and folder.hostile
    with pytest.raises(CheckpointError, match=r"out_dir=.*manifest\.jsonl is damaged"):
        folder.claim("out_dir")
    with pytest.raises(CheckpointError, match="cannot be appended to"):
        folder.write_json("config.json", {"k": 1})
    assert outside.read_text() == ""  # nothing appended through the link


def test_a_users_temporary_looking_file_in_out_dir_is_foreign_and_kept(tmp_path, tiny_deletion):
    out_dir = tmp_path / "mine"
    out_dir.mkdir()
    (out_dir / ".backup.20240101.tmp").write_text("the user's")
    with pytest.raises(CheckpointError, match=r"did not write \(\['\.backup\.20240101\.tmp'\]"):
        tiny_deletion(out_dir=out_dir, overwrite=True)
    assert (out_dir / ".backup.20240101.tmp").read_text() == "the user's"


def test_a_named_out_dir_is_checked_before_any_score(tmp_path, tiny_deletion, monkeypatch):
    out_dir = tmp_path / "mine"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    monkeypatch.setattr(deletion_module, "model_score_rows", lambda *a, **k: pytest.fail("scored"))
    with pytest.raises(CheckpointError, match="did not write"):
        tiny_deletion(out_dir=out_dir)


def test_the_caches_keyed_folder_of_an_older_format_is_rewritten(tmp_path):
    """A keyed cache folder whose config.json holds more than the config (fixing's older
    format added its mistakes there) is this config's: rewritten, not "another run"."""
    resolved = {"k": 1}
    first = claim_result_folder(resolved, "fixing", "fixing run", cache=tmp_path)
    Folder(first).write_json("config.json", resolved | {"mistakes": [3, 5]})
    again = claim_result_folder(resolved, "fixing", "fixing run", cache=tmp_path)
    assert again == first and json.loads((again / "config.json").read_text()) == resolved
    named = tmp_path / "named"
    claim_result_folder(resolved, "fixing", "fixing run", out_dir=named)
    with pytest.raises(CheckpointError, match="holds another fixing run"):
        claim_result_folder({"k": 2}, "fixing", "fixing run", out_dir=named)


def test_an_unrecorded_file_in_the_caches_run_folder_does_not_stop_training(train_config, tmp_path):
    """Only a folder the user names is claimed; the cache's own keyed run folder keeps its
    rules (an older version's leftover file there is no user's)."""
    config = train_config(epochs=1, checkpoint_epochs=[1])
    first = train(config, cache=tmp_path, progress=False)
    (first.run_dir / "left_by_an_older_version.json").write_text("{}")
    again = train(config, cache=tmp_path, progress=False)
    assert again.run_dir == first.run_dir
