"""Load a checkpoint in PyTorch, save it from there, load that in MLX, and check both agree.

    python examples/torch_to_mlx.py CKPT OUT
"""

import sys

import numpy as np

import pnlm

source, out = sys.argv[1], sys.argv[2]
torch_model = pnlm.load(source, backend="torch")
torch_model.save(out)
mlx_model = pnlm.load(out, backend="mlx")

tokens = np.random.default_rng(0).integers(0, torch_model.spec.vocab_size, (2, 64))
diff = np.abs(torch_model.logits(tokens) - mlx_model.logits(tokens)).max()
prompt = torch_model.tokenizer.encode("It is a truth universally acknowledged")
same = list(torch_model.generate_ids(prompt, 32)) == list(mlx_model.generate_ids(prompt, 32))
print(f"logits on 2 x 64 tokens, torch vs MLX: max abs difference {diff:.2e}")
print(f"greedy generation of 32 tokens identical in both backends: {same}")
sys.exit(0 if diff < 1e-4 and same else 1)
