"""tracin-we: TracIn on the word-embedding layer (Yeh et al., NeurIPS 2022, arXiv 2202.11844).

Where each part of the paper lives (formulas and section numbers: ``docs/paper.md``):

- ``data`` (tasks, splits, label noise), ``tokenizer`` (the shipped BERT uncased vocabulary),
  ``models`` (BERT-tiny, the authors' CNN, any HF classifier; v1 §5) — every notebook.
- ``recipe`` (the training recipe: config, ``fit``, predictions) and ``train`` (a cached,
  resumable training run and its TracIn checkpoints) — notebook 01, and every retrain.
- ``influence/`` — TracIn-WE (v1 eq. 2) and its variants Topk (eqs. 3–4), Syn and NoC
  (``embedding``), the last-layer baselines TracIn-Last, Influence-Last, representer points and
  TracIn-TFIDF (``last_layer``), any layer (``layers``), word-level scores (``words``),
  Influence-Last word attribution for fixing (``attribution``), streaming top-k at scale
  (``streaming``); one entry point, ``influence.scores`` — notebooks 00, 02–08.
- ``by_hand`` — each step of eq. 2 by its definition, for teaching — notebook 00.
- ``explain`` — top-influence tables, word highlighting, the global-term diagnostic — 02.
- ``deletion`` and ``retrain`` — case deletion, DEL± and AUC-DEL (v1 §2.2, §5, Table 3) on
  cached retrains — 03; ``overlap`` — the no-word-overlap study (v1 §5) — 04; ``fixing`` —
  targeted fixing (v1 §6) — 05.
- ``cancellation`` and ``layerwise`` — the cancellation effect per layer — 06; ``noise`` — the
  2025 critique's noise detection and layer aggregation — 07.
- ``lds`` and ``stats`` — the linear datamodeling score and paired bootstrap comparisons — 03, 08.
- ``pretrain`` — MLM pretraining of BERT-tiny on the texts fine-tuning leaves unused (BERT's
  masking), the start of fine-tuning with ``TrainConfig(init_from=...)``; ``influence.multistage``
  — influence of pretraining texts on fine-tuned predictions: multi-stage TracIn-WE, Chen et al.'s
  multi-stage influence function (arXiv 2007.09081), the domain × test-class table.
- Plumbing: ``inputs`` (the batch format, one forward call, special token ids), ``params``
  (flat notebook/preset parameters → validated configs), ``persistence`` (cache keys, hashes,
  atomic writes, verified reads), ``cached_run`` (the cached, resumable epoch loop of training
  and pretraining), ``checkpoints`` (checkpoint files, ``Trainer`` folders),
  ``reporting`` (figures and recorded metrics), ``paper`` (the paper's published numbers),
  ``reproduce`` (the papermill runner behind ``make reproduce``).
"""

__version__ = "0.1.0"
