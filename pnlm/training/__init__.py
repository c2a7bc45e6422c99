"""Training, written once for every backend and every method: the loop (loop.py: its batches, its loss's
extra inputs and its writer passed in), the train-step contract both backends keep (step.py), the
batches a run draws (batches.py, prefetch.py), evaluation (evaluation.py), a run from start to summary
(runs.py, metric_logs.py), the learning-rate schedule (schedule.py), what training costs (cost.py), the
memory a command needs (memory.py), and the unigram floor a model has to beat (unigram.py)."""
