"""What training costs: FLOPs per token, device-hours, and model FLOPs utilization (MFU).

FLOPs follow the usual count (Kaplan et al. 2020; PaLM, appendix B): a forward pass costs 2 FLOPs per
weight of every matrix product (the output layer included, embeddings lookups not) plus 4·L·d·T for
attention scores and values at context T; training costs three forward passes (6N + 12·L·d·T).
A LoRA step computes no gradient for the frozen weights: 4N + 6·N_adapters + 12·L·d·T. MFU is the
achieved rate over the device's dense peak, known for the GPUs listed below; elsewhere it is not
reported (a CPU's peak depends on its clocks and vector units, nothing pnlm can read reliably).
"""

from __future__ import annotations

from pnlm.model.lora import LoraSpec, trainable_parameters
from pnlm.model.spec import ModelSpec

# Dense peak FLOP/s by (device name fragment, precision); float32 on these GPUs runs on TF32 tensor cores.
PEAK_FLOPS = {
    ("H100 PCIe", "bfloat16"): 756e12, ("H100 PCIe", "float32"): 378e12,
    ("H100 NVL", "bfloat16"): 835e12, ("H100 NVL", "float32"): 418e12,
    ("H100", "bfloat16"): 989e12, ("H100", "float32"): 494e12,
    ("H200", "bfloat16"): 989e12, ("H200", "float32"): 494e12,
    ("GH200", "bfloat16"): 989e12, ("GH200", "float32"): 494e12,
    ("A100", "bfloat16"): 312e12, ("A100", "float32"): 156e12,
    ("L40S", "bfloat16"): 362e12, ("L40S", "float32"): 183e12,
}


def matmul_parameters(spec: ModelSpec) -> int:
    """Weights that take part in a matrix product per token: every linear layer and the output layer."""
    kv = spec.n_kv_heads * spec.head_dim
    attention = 2 * spec.d_model * spec.d_model + 2 * spec.d_model * kv
    mlp = 3 * spec.d_model * spec.d_ff
    return spec.n_layers * (attention + mlp) + spec.vocab_size * spec.d_model


def train_flops_per_token(spec: ModelSpec, context: int, lora: LoraSpec | None = None) -> float:
    attention = 12 * spec.n_layers * spec.d_model * context
    n = matmul_parameters(spec)
    if lora is None:
        return 6 * n + attention
    return 4 * n + 6 * trainable_parameters(spec, lora) + attention


def peak_flops(device_name: str, precision: str) -> float | None:
    """Dense peak of one device, or None where it is not known."""
    for (fragment, dtype), peak in PEAK_FLOPS.items():
        if fragment in device_name and dtype == precision:
            return peak
    return None


def cost_record(tokens: int, elapsed_s: float, flops_per_token: float, devices: int, device_name: str,
                precision: str) -> dict[str, float | None]:
    """The cost fields of a metrics line: cumulative FLOPs, device-hours, and MFU where the peak is known."""
    flops = tokens * flops_per_token
    peak = peak_flops(device_name, precision)
    mfu = flops / (elapsed_s * peak * devices) if peak and elapsed_s > 0 else None
    return {"flops": flops, "device_hours": elapsed_s * devices / 3600, "mfu": mfu}
