from __future__ import annotations

import pandas as pd
import torch

from tracin_we.core.tokenizer import load_tokenizer
from tracin_we.influence import WordScores
from tracin_we.report.explain import global_term, highlight_words


def test_global_term_counts_a_shared_top_example():
    scores = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    scores[:, 7] = 100.0  # one training example is every test point's top proponent
    result = global_term(scores, k=3)
    assert result["most_common_index"] == 7 and result["most_common_count"] == 5
    assert result["top1_shared"] == 1.0
    local = torch.full((4, 5), -1.0)
    local[:, :4].fill_diagonal_(1.0)  # each test point has its own top proponent...
    local[:, 4] = -10.0  # ...and all share one top opponent
    result = global_term(local, k=1)
    assert result["top1_shared"] == 0.0
    assert (result["most_common_index"], result["most_common_count"]) == (4, 4)


def test_highlight_words_colours_only_shared_words():
    tokenizer = load_tokenizer()
    ids = tokenizer("the rocketship launched")["input_ids"]  # [CLS] the rocket ##ship launched
    words = pd.DataFrame({"word": ["rocketship"], "start": [2], "end": [4], "contribution": [0.5]})
    rendered = highlight_words(WordScores(0.5, pd.DataFrame(), words), tokenizer, ids)
    assert rendered.count("<span") == 1 and 'title="+0.5">rocketship</span>' in rendered
    assert "[CLS]" not in rendered and "launched" in rendered
