"""Ablation (docs/results/pn-ablation.md, section 7): an SLM given what a projected network's draw gives its
MLPs, to ask whether the PN's lead at 400 steps is its experts or how its MLPs start and move:
--mlp-lr-scale, the MLP weights train at that multiple of the learning rate (a PN's AdamW moves them at |a|_1
times it, 1.4 to 1.9 on average over a draw); --layer0-mlp-scale, layer 0's gate, up and down projections
start at that multiple of their scale (the draws that led started that MLP louder).

    python bench/slm_mlp_ablation.py --data STORE --out RUN --model small --steps 400 --lr 1e-3 --seed 0 \
        [--mlp-lr-scale 1.6] [--layer0-mlp-scale 1.3] [--eval-every 80] [--checkpoint-every 100]

Torch only, and only here: pnlm's optimizer has one learning rate and its initialization is GPT-2's. The run is
`pnlm.pretrain`'s own (same data order, schedule, evaluations and files): the torch train step's AdamW split
into two parameter groups (every `.mlp.` weight at scale × lr, the rest at lr, the schedule applied to both),
the seed's initial weights with layer 0's MLP multiplied. The settings are recorded beside the run
(RUN.ablation.json), and a resumed run must give the same ones.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pnlm
from pnlm.backends.torch import train_step as torch_train_step
from pnlm.files.atomic import atomic_file
from pnlm.training import runs as training_runs

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
            # The step's own AdamW, before its first step, its one group split in two.
            rest = self.optimizer.param_groups[0]
            rest["params"] = [p for n, p in named if ".mlp." not in n]
            rest["lr_scale"] = 1.0
            self.optimizer.add_param_group({"params": mlp, "lr_scale": scale})

        def set_lr(self, lr: float) -> None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]

    return MlpScaledStep


def weights_with_layer0_mlp_scale(scale: float):
    seeded = training_runs.init_weights

    def init_weights(spec, seed: int = 0):
        weights = seeded(spec, seed)
        layer0 = [name for name in weights if name.startswith("model.layers.0.mlp.")]
        if not layer0:
            raise SystemExit("--layer0-mlp-scale: the model has no model.layers.0.mlp. weights")
        return {**weights, **{name: weights[name] * weights[name].dtype.type(scale) for name in layer0}}

    return init_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="small")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mlp-lr-scale", type=float, default=1.0)
    parser.add_argument("--layer0-mlp-scale", type=float, default=1.0)
    parser.add_argument("--eval-every", type=int, default=80)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    args = parser.parse_args()
    out = Path(args.out)
    settings = {"mlp_lr_scale": args.mlp_lr_scale, "layer0_mlp_scale": args.layer0_mlp_scale}
    record = out.with_name(out.name + ".ablation.json")
    if record.is_file():
        if json.loads(record.read_text()) != settings:
            raise SystemExit(f"{record}: {out} trained with other settings ({record.read_text().strip()}); "
                             "give those or a new --out")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(record) as f:
            f.write((json.dumps(settings) + "\n").encode())
    torch_train_step.TrainStep = step_with_mlp_scale(args.mlp_lr_scale)
    training_runs.init_weights = weights_with_layer0_mlp_scale(args.layer0_mlp_scale)
    summary = pnlm.pretrain(args.data, out, model=args.model, method="slm", backend="torch", steps=args.steps,
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed, eval_every=args.eval_every,
                            checkpoint_every=args.checkpoint_every, resume=True)
    print(json.dumps({"out": str(out), **settings, "summary": str(summary)}))


if __name__ == "__main__":
    main()
