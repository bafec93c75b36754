"""The explorer: its logic on a three-class dataset written here, its page's states, and the page
itself served by Voilà and driven in headless Chromium (Playwright), which skips without them."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests import browser
from tracin_we.explore.__main__ import main as explore_main
from tracin_we.explore.app import ExplorerApp
from tracin_we.explore.session import Explorer, results_html, run_choices
from tracin_we.influence import scores, top_k

WORDS = {  # three classes, each with its own words, and words they share
    "weather": ["rain", "storm", "sunny", "cloud", "wind", "snow"],
    "food": ["bread", "cheese", "soup", "pasta", "apple", "spice"],
    "sport": ["goal", "match", "team", "score", "coach", "race"],
}
SHARED = ["today", "the", "city", "new", "big", "long"]
SENTENCE = "storm and rain over the city today"


def three_topics(n: int, seed: int = 0) -> pd.DataFrame:
    rng, rows = np.random.default_rng(seed), []
    for i in range(n):
        topic = list(WORDS)[i % 3]
        words = [*rng.choice(WORDS[topic], size=4), *rng.choice(SHARED, size=2)]
        rows.append({"sentence": " ".join(rng.permutation(words)), "topic": topic})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def topics_preset(tmp_path_factory) -> Path:
    """A preset whose 01 and 03 train the same small CNN on ``three_topics``."""
    folder = tmp_path_factory.mktemp("topics")
    three_topics(240).to_csv(folder / "topics.csv", index=False)
    common = {
        "dataset": str(folder / "topics.csv"), "text_columns": ["sentence"],
        "label_column": "topic", "model": "cnn", "n_train": 120, "n_val": 30, "n_test": 60,
        "max_length": 16, "epochs": 2, "batch_size": 16, "optimizer": "adam", "lr": 0.004,
        "checkpoint_epochs": [1, 2],
    }  # fmt: skip
    path = folder / "topics.yaml"
    path.write_text(yaml.safe_dump({"notebooks": ["01", "03"], "common": common}))
    return path


@pytest.fixture(scope="module")
def explorer(topics_preset, tmp_path_factory) -> Explorer:
    cache = tmp_path_factory.mktemp("cache")
    (choice,) = run_choices([topics_preset])  # 01 and 03 train the same config: one run
    return Explorer.open(choice, cache=cache, train_missing=True, progress=False)


def test_choices_name_their_preset_and_an_untrained_run_is_none(topics_preset, tmp_path):
    (choice,) = run_choices([topics_preset])
    assert choice.label == "topics preset: cnn (notebooks 01–02)"
    assert choice.command == f"python -m tracin_we.reproduce --preset {topics_preset} --only 01"
    assert Explorer.open(choice, cache=tmp_path) is None  # nothing trained, nothing trains


def test_explain_lists_each_methods_top_k_with_word_highlights(explorer):
    assert explorer.label_names == ["food", "sport", "weather"]  # from the data, sorted
    example = explorer.sentence(SENTENCE)
    assert example["label"] == int(explorer.probabilities(example).argmax())
    explained = explorer.explain(example, k=3)
    train = explorer.splits["train"]
    for method, row in explained.scores.items():
        independent = scores(method, explorer.model, explorer.checkpoints, train, [example])[0]
        torch.testing.assert_close(row, independent)
        table = explained.top[method]
        for direction, proponents in (("proponent", True), ("opponent", False)):
            listed = table[table.direction == direction]
            best = top_k(independent[None], 3, proponents=proponents).indices[0].tolist()
            assert listed.train_index.tolist() == best
    proponents = explained.top["tracin-we"].query("direction == 'proponent'")
    assert proponents.html.str.contains(r">(?:storm|rain|city|today)</span>").any()  # its words
    page = results_html(explorer, explained)
    predicted = explorer.label_names[int(explained.probabilities.argmax())]
    assert page.count("class='tracin-method'") == 2 and f"Prediction: <b>{predicted}</b>" in page


def test_a_sentence_must_have_words_and_a_label_in_range(explorer):
    with pytest.raises(ValueError, match="text is empty"):
        explorer.sentence("   ")
    with pytest.raises(ValueError, match=r"label=3; allowed: 0\.\.2"):
        explorer.sentence(SENTENCE, label=3)


def test_delete_and_retrain_against_random_is_cached(explorer):
    explained = explorer.explain(explorer.test_example(0), k=4)
    first = explorer.delete_and_retrain(explained, backend="sequential", progress=False)
    assert first.deleted.tolist() == [
        "nothing", "top 4 proponents, TracIn-WE", "top 4 proponents, TracIn-Last",
        "4 random texts",
    ]  # fmt: skip
    assert first.delta.iloc[0] == 0 and np.isfinite(first.p).all()
    sets = {
        tuple(sorted(t.train_index[t.direction == "proponent"])) for t in explained.top.values()
    }
    assert first.n_trained.iloc[0] == 2 + len(sets)  # all texts, k random, each distinct top k
    again = explorer.delete_and_retrain(explained, backend="sequential", progress=False)
    assert again.n_trained.iloc[0] == 0
    pd.testing.assert_series_equal(again.p, first.p)


def test_only_the_cnn_is_retrained_here(explorer):
    transformer = Explorer.__new__(Explorer)
    transformer.config = replace(explorer.config, model="bert-tiny")
    with pytest.raises(ValueError, match=r"model='bert-tiny': retraining it here takes minutes"):
        transformer.delete_and_retrain(None)


def test_the_page_says_what_to_run_when_nothing_is_trained(topics_preset, tmp_path):
    app = ExplorerApp([topics_preset], cache=tmp_path)
    assert "Not trained yet" in app.status.value
    assert f"python -m tracin_we.reproduce --preset {topics_preset} --only 01" in app.status.value
    assert app.explain_button.disabled and not app.train_button.disabled


def test_the_command_line_refuses_an_unknown_preset_and_port(capsys):
    with pytest.raises(SystemExit):
        explore_main(["--preset", "no-such-preset"])
    assert "preset='no-such-preset' is unknown" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        explore_main(["--port", "0"])
    assert "--port=0 must be in 1..65535" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int, server: subprocess.Popen, seconds: float = 90) -> None:
    """Until the server accepts a connection (a GET would start a kernel for nothing)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the explorer exited with {server.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"port {port} did not answer in {seconds} s")


@pytest.mark.slow
def test_the_page_in_headless_chromium(explorer, topics_preset, tmp_path):
    """`python -m tracin_we.explore` serves the page; a reader types a sentence, explains it and
    deletes-and-retrains, and sees both methods' lists, highlighted words and the table."""
    found = browser.find_browser()
    if found is None:
        pytest.skip("no Chromium/Chrome found (apt-get install chromium, or make browser)")
    missing = [m for m in ("voila", "playwright") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{missing} not installed (pip install -e '.[dev]')")
    from playwright.sync_api import sync_playwright

    port, log = free_port(), (tmp_path / "server.log").open("w")
    # One torch thread, as this suite trained the run with: the thread count is in its cache key.
    env = os.environ | {"TRACIN_WE_CACHE": str(explorer.cache), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tracin_we.explore", "--preset", str(topics_preset),
               "--port", str(port), "--no-browser"]  # fmt: skip
    server = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_for(port, server)
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=found, args=["--no-sandbox"])
            page = chromium.new_page(viewport={"width": 1280, "height": 1400})
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector(".tracin-explain:not([disabled])")
            page.fill(".tracin-sentence input", SENTENCE)
            page.click(".tracin-explain")
            page.wait_for_selector(".tracin-method[data-method='tracin-last'] .tracin-top")
            assert page.locator(".tracin-method").count() == 2
            we = page.locator(".tracin-method[data-method='tracin-we'] span[title]")
            assert {"storm", "rain", "city", "today"} & set(we.all_inner_texts())
            page.click(".tracin-retrain")
            page.wait_for_selector(".tracin-deletion")
            assert page.locator(".tracin-deletion tr").count() == 5  # header + 4 retrains
            shot = tmp_path / "explorer.png"
            page.screenshot(path=str(shot))
            chromium.close()
    finally:  # Voilà and the kernels it started
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    n_colours, not_background = browser.colours(shot)
    assert n_colours > 50 and not_background > 0.05, (n_colours, not_background)
