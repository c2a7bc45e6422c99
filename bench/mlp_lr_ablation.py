"""Ablation (docs/results/pn-ablation.md, section 7): an SLM whose MLP weights train at --mlp-lr-scale times
the learning rate of the rest, to ask whether a projected network's lead at 400 steps is its experts or the
faster pace at which AdamW moves its MLPs (|a|_1 times the learning rate, 1.4 to 1.9 on average over a draw).

    python bench/mlp_lr_ablation.py --data STORE --out RUN --model small --steps 400 --lr 1e-3 --seed 0 \
        --mlp-lr-scale 1.6 [--eval-every 80] [--checkpoint-every 100]

Torch only, and only here: pnlm's optimizer has one learning rate. The run is `pnlm.pretrain`'s own (same
data order, schedule, evaluations and files), with the torch train step's AdamW split into two parameter
groups: every `.mlp.` weight at scale × lr, the rest at lr, the schedule applied to both. The scale is recorded
beside the run (RUN.mlp-lr-scale.json), and a resumed run must give the same one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import pnlm
from pnlm.backends.torch import train_step as torch_train_step

BaseStep = torch_train_step.TrainStep


def step_with_mlp_scale(scale: float):
    class MlpScaledStep(BaseStep):
        """The torch train step with its MLP weights in their own AdamW group, at scale × the learning rate."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
            mlp = [p for n, p in named if ".mlp." in n]
            if not mlp:
                raise SystemExit("--mlp-lr-scale: the model has no .mlp. weights to scale")
            spec = self.optimizer_spec
            self.optimizer = torch.optim.AdamW(
                [{"params": [p for n, p in named if ".mlp." not in n], "lr_scale": 1.0},
                 {"params": mlp, "lr_scale": scale}],
                lr=spec.lr, betas=(spec.beta1, spec.beta2), eps=spec.eps, weight_decay=spec.weight_decay, fused=True)

        def set_lr(self, lr: float) -> None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]

    return MlpScaledStep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="small")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mlp-lr-scale", type=float, required=True)
    parser.add_argument("--eval-every", type=int, default=80)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    args = parser.parse_args()
    out = Path(args.out)
    record = out.with_name(out.name + ".mlp-lr-scale.json")
    if record.is_file():
        if json.loads(record.read_text())["mlp_lr_scale"] != args.mlp_lr_scale:
            raise SystemExit(f"{record}: {out} trained with another --mlp-lr-scale; give that one or a new --out")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps({"mlp_lr_scale": args.mlp_lr_scale}) + "\n")
        tmp.replace(record)
    torch_train_step.TrainStep = step_with_mlp_scale(args.mlp_lr_scale)
    summary = pnlm.pretrain(args.data, out, model=args.model, method="slm", backend="torch", steps=args.steps,
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed, eval_every=args.eval_every,
                            checkpoint_every=args.checkpoint_every, resume=True)
    print(json.dumps({"out": str(out), "mlp_lr_scale": args.mlp_lr_scale, "summary": str(summary)}))


if __name__ == "__main__":
    main()
