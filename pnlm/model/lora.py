"""LoRA adapters, framework-free: the spec, their initial values, fusing them into plain weights.

An adapted linear layer computes y = x Wᵀ + (alpha / rank) · (x Aᵀ) Bᵀ, with A (rank, in) and
B (out, rank); B starts at zero, so an adapted model starts as its base. Adapters are named after
the layer they adapt: `model.layers.0.self_attn.q_proj.lora_A`, `….lora_B`. This numpy code is the
oracle the backends' adapted layers are tested against, and what `pnlm fuse` runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pnlm.errors import PnlmError, SpecError
from pnlm.model.spec import ModelSpec

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
ADAPTER_SUFFIXES = (".lora_A", ".lora_B")
LAYER_MODULES = {**{name: "self_attn" for name in ATTENTION}, **{name: "mlp" for name in MLP}}


@dataclass(frozen=True)
class LoraSpec:
    """rank r; alpha scales the update by alpha / r; targets: which linear layers of every block."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ATTENTION + MLP

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def validate(self, spec: ModelSpec) -> "LoraSpec":
        if not 1 <= self.rank <= min(spec.d_model, spec.d_ff):
            raise SpecError(f"LoRA rank must be between 1 and {min(spec.d_model, spec.d_ff)}, got {self.rank}")
        if not self.alpha > 0:
            raise SpecError(f"LoRA alpha must be positive, got {self.alpha}")
        unknown = sorted(set(self.targets) - set(LAYER_MODULES))
        if unknown or not self.targets:
            raise SpecError(f"LoRA targets {', '.join(unknown) or '(none)'}: expected some of {', '.join(LAYER_MODULES)}")
        return self

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, data: object, source: str) -> "LoraSpec":
        if not isinstance(data, dict) or set(data) != {"rank", "alpha", "targets"}:
            raise SpecError(f"{source}: the adapter settings must have exactly rank, alpha and targets")
        rank, alpha, targets = data["rank"], data["alpha"], data["targets"]
        if isinstance(rank, bool) or not isinstance(rank, int) or not isinstance(alpha, (int, float)) \
                or not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise SpecError(f"{source}: adapter rank must be an integer, alpha a number, targets a list of names")
        return cls(rank, float(alpha), tuple(targets))


def adapted_layers(spec: ModelSpec, lora: LoraSpec) -> dict[str, tuple[int, int]]:
    """Canonical name of every adapted weight matrix → its (out, in) shape."""
    kv = spec.n_kv_heads * spec.head_dim
    shapes = {"q_proj": (spec.d_model, spec.d_model), "k_proj": (kv, spec.d_model), "v_proj": (kv, spec.d_model),
              "o_proj": (spec.d_model, spec.d_model), "gate_proj": (spec.d_ff, spec.d_model),
              "up_proj": (spec.d_ff, spec.d_model), "down_proj": (spec.d_model, spec.d_ff)}
    return {f"model.layers.{layer}.{LAYER_MODULES[name]}.{name}": shapes[name]
            for layer in range(spec.n_layers) for name in lora.targets}


def adapter_shapes(spec: ModelSpec, lora: LoraSpec) -> dict[str, tuple[int, int]]:
    out = {}
    for layer, (rows, cols) in adapted_layers(spec, lora).items():
        out[f"{layer}.lora_A"] = (lora.rank, cols)
        out[f"{layer}.lora_B"] = (rows, lora.rank)
    return out


def init_adapters(spec: ModelSpec, lora: LoraSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """A uniform in ±1/sqrt(in) (as a freshly initialized linear layer), B zero: the adapted model starts as its base."""
    rng = np.random.default_rng([seed, 0x10CA])
    out = {}
    for name, shape in adapter_shapes(spec, lora).items():
        if name.endswith(".lora_A"):
            bound = 1.0 / np.sqrt(shape[1])
            out[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
        else:
            out[name] = np.zeros(shape, dtype=np.float32)
    return out


def check_adapters(adapters: dict[str, np.ndarray], spec: ModelSpec, lora: LoraSpec, source: str) -> None:
    expected = adapter_shapes(spec, lora)
    if set(adapters) != set(expected):
        missing, extra = sorted(set(expected) - set(adapters)), sorted(set(adapters) - set(expected))
        raise PnlmError(f"{source}: adapter tensors do not match the settings "
                        f"(missing {missing[:3] or 'none'}, unexpected {extra[:3] or 'none'})")
    for name, shape in expected.items():
        if tuple(adapters[name].shape) != shape:
            raise PnlmError(f"{source}: {name} has shape {tuple(adapters[name].shape)}, expected {shape}")


def fuse(weights: dict[str, np.ndarray], adapters: dict[str, np.ndarray], spec: ModelSpec,
         lora: LoraSpec) -> dict[str, np.ndarray]:
    """Plain weights equal to base + adapters: W + (alpha / r) · B A for every adapted layer."""
    check_adapters(adapters, spec, lora, "adapters")
    fused = dict(weights)
    for layer in adapted_layers(spec, lora):
        a = adapters[f"{layer}.lora_A"].astype(np.float64)
        b = adapters[f"{layer}.lora_B"].astype(np.float64)
        base = weights[f"{layer}.weight"]
        fused[f"{layer}.weight"] = (base.astype(np.float64) + lora.scale * (b @ a)).astype(base.dtype)
    return fused


def trainable_parameters(spec: ModelSpec, lora: LoraSpec) -> int:
    return sum(rows * cols for rows, cols in adapter_shapes(spec, lora).values())
