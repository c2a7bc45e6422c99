"""The model described and its maths in numpy, the oracle both backends are tested against: the spec and
its presets (spec.py), the projected network's algebra (projection.py), LoRA (lora.py), RoPE's
frequencies (rope.py), the losses a train step is built with (losses.py), and choosing the next token
(decoding.py). Nothing here reads a checkpoint, a store or a framework."""
