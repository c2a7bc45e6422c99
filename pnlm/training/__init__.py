"""Training, written once for every backend and every method: the loop (loop.py: its batches, its loss's
extra inputs and its writer passed in), the train-step contract both backends keep (step.py), the
batches a run draws (batches.py), evaluation (evaluation.py), and a run from start to summary (runs.py)."""
