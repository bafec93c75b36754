"""Fine-tuning BERT-tiny from a small offline MLM pretraining run vs from a random init, with Adam
and with the paper's SGD recipe (lr 2e-2, momentum 0.9; v1 §5). Does SGD train now?

Pretraining (``training.pretrain``): ``--n-corpus`` texts (default 3,000, domain-stratified) of
the AG News texts that the fine-tuning run leaves unused, ``--pretrain-epochs`` epochs of Adam
lr 1e-3, batch 32, 64 tokens. Fine-tuning (``training.train``): 2,000 texts, 500 validation,
500 test, ``--epochs`` epochs, batch 32, seed 0, for each (optimizer, init). Runs are cached
(``--cache``), so a rerun only prints. Writes ``<out>/pretrain_init.json``.

    PYTHONPATH=. TRACIN_WE_DATA_DIR=../shared/data .venv/bin/python \\
        benchmarks/bench_pretrain_init.py --epochs 1

took 11 min on this project's 2 shared cores (load ~6): pretraining 323 s, the four
fine-tunings 33–125 s each (5.4 min on a less loaded machine, the run in
benchmarks/README.md). ``--epochs 3`` (the default) is about 3x the fine-tuning time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tracin_we.core.persistence import write_json
from tracin_we.training.pretrain import PretrainConfig, pretrain
from tracin_we.training.recipe import TrainConfig
from tracin_we.training.train import train

RECIPES = {"adam": dict(optimizer="adam", lr=1e-3), "sgd": dict(optimizer="sgd", lr=2e-2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-corpus", type=int, default=3000)
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default="runs/bench/cache")
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = dict(n_train=2000, n_val=500, n_test=500, max_length=64, seed=0)
    started = time.perf_counter()
    pre_config = PretrainConfig.from_params(
        **data,
        n_corpus=args.n_corpus,
        epochs=args.pretrain_epochs,
        checkpoint_epochs=list(range(1, args.pretrain_epochs + 1)),
    )
    pre = pretrain(pre_config, cache=args.cache, progress=False)
    pre_seconds = time.perf_counter() - started
    print(
        f"pretraining: {len(pre.corpus)} texts, MLM loss by epoch "
        f"{[round(h['train_loss'], 3) for h in pre.history]}, {pre_seconds:.0f} s"
    )
    rows = []
    for name, recipe in RECIPES.items():
        for init in ("random", "mlm"):
            config = TrainConfig.from_params(
                **data,
                **recipe,
                model="bert-tiny",
                pretrained=False,
                momentum=0.9,
                epochs=args.epochs,
                checkpoint_epochs=[args.epochs],
                init_from=str(pre.run_dir) if init == "mlm" else None,
            )
            t0 = time.perf_counter()
            result = train(config, cache=args.cache, progress=False)
            rows.append(
                {
                    "optimizer": name,
                    "lr": recipe["lr"],
                    "init": init,
                    "val_accuracy_by_epoch": [round(h["val_accuracy"], 3) for h in result.history],
                    "test_accuracy": round(result.metrics["test_accuracy"], 3),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            print(rows[-1])
    out = {
        "pretrain": {
            "n_corpus": len(pre.corpus),
            "epochs": args.pretrain_epochs,
            "mlm_loss_by_epoch": [h["train_loss"] for h in pre.history],
            "seconds": round(pre_seconds, 1),
        },
        "finetune": rows,
        "total_seconds": round(time.perf_counter() - started, 1),
        "threads": args.threads,
    }
    write_json(Path(args.out) / "pretrain_init.json", out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
