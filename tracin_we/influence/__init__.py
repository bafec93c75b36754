"""Training-data influence of language models: one function for every method.

``scores(method, model, checkpoints, train, test, **options)`` → (len(test), len(train)),
positive = proponent; ``top_k`` and the streaming top-k for data sets whose score matrix does not
fit; ``word_scores`` for a pair's word-level split. The methods, options and checks are described
in ``influence.api``; each kernel lives in a module of its own (``embedding``, ``last_layer``,
``layers``), the gradient passes in ``gradients`` and ``context``.
"""

from tracin_we.influence.api import (
    METHODS,
    Checkpoints,
    Data,
    InfluentialResults,
    check_k,
    scores,
    self_influence,
    to_captum,
    to_dattri,
    top_k,
)
from tracin_we.influence.streaming import (
    ProponentsOpponents,
    top_k_streaming,
    top_k_streaming_both,
)
from tracin_we.influence.words import WordScores, word_scores

__all__ = [
    "METHODS",
    "Checkpoints",
    "Data",
    "InfluentialResults",
    "ProponentsOpponents",
    "WordScores",
    "check_k",
    "scores",
    "self_influence",
    "to_captum",
    "to_dattri",
    "top_k",
    "top_k_streaming",
    "top_k_streaming_both",
    "word_scores",
]
