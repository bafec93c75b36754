"""tracin-we: TracIn on the word-embedding layer (Yeh et al., NeurIPS 2022), reproduced.

Modules: ``data`` (tasks, splits, tokenization), ``models`` (BERT-tiny, the authors' CNN, any HF
classifier), ``train`` (the paper's recipe, cached checkpoints), ``influence`` (TracIn-WE and the
baselines), ``deletion`` (the case-deletion evaluation), ``reproduce`` (the notebook runner).
"""

__version__ = "0.1.0"
