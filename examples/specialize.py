"""From corpora to a specialized model in Python only, on the sample books shipped with pnlm.

Austen and Bierce are the generic set, Hamlet the domain that arrives late. The generic set is cut into
windows, embedded and clustered; a projected network is pretrained over the clusters (PyTorch); Hamlet
is labelled with the same clusters and gets the plain small model of its cluster's expert, which is
fine-tuned on it with MLX, evaluated before and after, and run.

    python examples/specialize.py OUT [--steps 300] [--finetune-steps 60] [--documents 60] [--embedder DIR]

A few minutes on a laptop's CPU at the default size; every function is pnlm's public API.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pnlm


def specialize(out: Path, steps: int = 300, finetune_steps: int = 60, documents: int = 60,
               embedder: Path | None = None) -> dict[str, float]:
    books = sorted((Path(pnlm.__file__).parent / "sample_data").glob("*.jsonl.gz"))
    generic = [book for book in books if "hamlet" not in book.name]
    hamlet = [book for book in books if "hamlet" in book.name]

    # 1. Data: one tokenizer for all, a generic store and the domain's, the generic windows clustered.
    first = pnlm.ReadOptions(max_documents=documents)
    pnlm.train_tokenizer(books, 1024, out / "tokenizer", read=first)
    pnlm.prepare(generic, out / "tokenizer", 64, out / "generic", read=first)
    pnlm.prepare(hamlet, out / "tokenizer", 64, out / "hamlet", valid_fraction=0.15, test_fraction=0.15)
    pnlm.cluster(out / "generic", 4, out / "clusters", embedder=embedder)  # None: all-MiniLM-L6-v2
    histogram = pnlm.assign(out / "hamlet", out / "clusters", split="train", all_splits=True)
    print(f"Hamlet's windows by cluster: {[round(share, 2) for share in histogram.histogram]}")

    # 2. Plan early: a projected network over the 4 clusters, the `small` model projected (pn-small: h=4 basis
    #    matrices per MLP matrix, m=4 embedding width, k from the clusters), whose MLPs are about half of it.
    run = pnlm.pretrain(out / "generic", out / "pn", model="pn-small", method="pn", clusters=out / "clusters",
                        backend="torch", steps=steps, batch_size=8, lr=2e-3)
    print(f"pretrained {run.steps} steps: loss {run.final_loss:.3f}, {run.tokens_per_s:,} tokens/s")

    # 3. The domain arrives: its expert, as a plain small model, fine-tuned with MLX.
    expert = pnlm.instantiate(out / "pn", out / "hamlet-expert", domain=out / "hamlet")
    print(f"Hamlet gets expert {expert.report['expert']} (top share {expert.report['top_share']:.2f})")
    before = pnlm.evaluate(out / "hamlet-expert", out / "hamlet", backend="mlx")
    tuned = pnlm.finetune(out / "hamlet-expert", out / "hamlet", out / "hamlet-run", backend="mlx",
                          steps=finetune_steps, lr=1e-3, eval_every=10, patience=2)
    after = pnlm.evaluate(tuned.checkpoint, out / "hamlet", backend="mlx")
    print(f"Hamlet test perplexity: {before.macro_ppl:.1f} before fine-tuning, {after.macro_ppl:.1f} after")

    # 4. Run it.
    model = pnlm.load(tuned.checkpoint, backend="mlx")
    print("HAMLET" + model.generate("HAMLET", max_tokens=24, temperature=0.8, seed=0))
    return {"before": before.macro_ppl, "after": after.macro_ppl}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="A new folder for the stores, runs and models.")
    parser.add_argument("--steps", type=int, default=300, help="Pretraining steps.")
    parser.add_argument("--finetune-steps", type=int, default=60, help="Fine-tuning steps at most.")
    parser.add_argument("--documents", type=int, default=60, help="Generic documents to read.")
    parser.add_argument("--embedder", type=Path, help="A sentence-transformers folder (default: all-MiniLM-L6-v2).")
    args = parser.parse_args()
    specialize(args.out, args.steps, args.finetune_steps, args.documents, args.embedder)
