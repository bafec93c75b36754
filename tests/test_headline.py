"""The README's headline table is written from run folders (``report.headline``)."""

from __future__ import annotations

import pytest

from tests.test_pretrained_page import _run
from tracin_we.report import headline


def test_the_table_comes_from_the_runs_and_replaces_only_its_block(tmp_path, capsys):
    _run(tmp_path / "default", 0.0, 0.785, 0.800, noise=0.0, init="random(seed=0)")
    _run(tmp_path / "pretrained", -0.5, 0.878, 0.872)
    block = headline.table(tmp_path)
    lines = block.splitlines()
    assert lines[0] == headline.START and lines[-1] == headline.END
    (del_plus,) = [line for line in lines if line.startswith("| DEL+, TR-WE − TR-Last")]
    assert "**not separated**" in del_plus.split(" | ")[1]  # default: equal values
    assert "**TR-WE better**" in del_plus.split(" | ")[2]  # pretrained: WE's DEL+ made lower
    assert "| test accuracy of the CNN of 03–08 | 0.800 | 0.872 |" in lines
    assert "0.785 (`random(seed=0)`) | 0.878 (`pretrained:minilm-l6`) |" in block
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{headline.START}\nold\n{headline.END}\n\nafter\n")
    headline.main(["--runs", str(tmp_path), "--readme", str(readme)])
    assert readme.read_text() == f"# title\n\n{block}\n\nafter\n"
    with pytest.raises(SystemExit) as done:
        headline.main(["--runs", str(tmp_path), "--readme", str(readme), "--check"])
    assert done.value.code == 0
    _run(tmp_path / "other", 0.0, 0.5, 0.5)
    (tmp_path / "pretrained" / "metrics" / "01_train.json").unlink()
    headline.main(["--runs", str(tmp_path), "--readme", str(readme), "--check"])
    assert "runs under" in capsys.readouterr().out  # incomplete: nothing to compare
    assert "| not run |" in headline.table(tmp_path)
    headline.main(["--runs", str(tmp_path), "--readme", str(readme)])
    assert readme.read_text() == f"# title\n\n{block}\n\nafter\n"  # a run in part: left
    (tmp_path / "lone").mkdir()
    headline.main(["--runs", str(tmp_path / "lone"), "--readme", str(readme)])
    assert readme.read_text() == f"# title\n\n{block}\n\nafter\n"  # left as it is
    assert "no default, pretrained run" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no headline block"):
        headline.updated("# no block", block)
