"""Options and help texts shared by several commands."""

from __future__ import annotations

import typer

OVERWRITE = typer.Option(False, "--overwrite", help="Replace OUT when it holds this command's kind of pnlm output "
                         "(a folder with anything else in it is never replaced).")
BACKEND_HELP = ("auto (cuda with an NVIDIA GPU, mlx on Apple silicon, torch elsewhere), torch (CPU), cuda "
                "(NVIDIA GPU) or mlx.")
PRECISION_HELP = ("float32, or bfloat16 compute over float32 weights and optimizer (autocast). "
                  "Default: bfloat16 on cuda, float32 elsewhere (MLX on a CPU has no bfloat16 BLAS: ~18x slower).")
COMPILE_HELP = ("torch.compile each transformer block (torch backends). Default: on for cuda, off elsewhere "
                "(on a CPU it costs ~30 s of compiling per process for little gain).")
LOG_TO = typer.Option([], "--log-to", help="Also log the metrics to: tensorboard (RUN/tensorboard). Repeatable.",
                      show_default=False)
LOG_EVERY_HELP = ("Log (and read the loss from the device) every N steps. Default: 10 on cuda, where each read "
                  "makes the host wait for the GPU; 1 elsewhere.")
