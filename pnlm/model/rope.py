"""RoPE's frequencies, in numpy: the oracle both backends build their rotations from (Llama 3's scaling
included, as transformers computes it in `_compute_llama3_parameters`)."""

from __future__ import annotations

import numpy as np

from pnlm.model.spec import ModelSpec


def inverse_frequencies(spec: ModelSpec) -> np.ndarray:
    """The head_dim / 2 angular frequencies (radians per position), float32, scaled as the spec says."""
    dims = spec.head_dim
    inv_freq = 1.0 / (np.float32(spec.rope_theta) ** (np.arange(0, dims, 2, dtype=np.float32) / np.float32(dims)))
    return scaled_frequencies(inv_freq.astype(np.float32), spec)


def scaled_frequencies(inv_freq: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Plain RoPE's frequencies (however a backend computed them) with the spec's scaling applied."""
    scaling = spec.rope_scaling
    if scaling is None:
        return inv_freq
    low_wavelength = scaling.original_context / scaling.low_freq_factor
    high_wavelength = scaling.original_context / scaling.high_freq_factor
    wavelength = 2 * np.pi / inv_freq
    scaled = np.where(wavelength > low_wavelength, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_context / wavelength - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelength >= high_wavelength) & (wavelength <= low_wavelength)
    return np.where(medium, smoothed, scaled).astype(np.float32)
