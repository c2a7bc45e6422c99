"""PyTorch backend: CPU (`torch`) and NVIDIA GPUs (`cuda`)."""
