"""The sentence-transformers model that embeds windows, in torch: on the CPU or on a CUDA GPU.

On a GPU each batch goes from pinned host memory to the device without waiting, and the next batch is
queued before the previous one's embeddings are read back, so the device is never idle on the host.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from pnlm.backends.torch.device import resolve_device
from pnlm.errors import BackendError, InputError

# Bytes a window's activations take per word piece and hidden unit in a forward pass without gradients
# (attention scores, the MLP's intermediate, a few copies of the hidden state), a generous bound used
# to size a GPU's batches.
ACTIVATION_BYTES = 48
GPU_BATCH = (256, 4096)


class SentenceEncoder:
    """A sentence-transformers folder on a torch device (cpu or cuda), in float32 or bfloat16."""

    def __init__(self, folder: str, precision: str, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before sentence-transformers imports huggingface_hub
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise BackendError("embedding windows needs sentence-transformers (pip install 'pnlm[data]')") from None
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            from pnlm.backends.torch.distributed import local_device

            self.device = local_device(self.device)
            if self.device.index is None:  # one process: the current GPU, named by its index
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        try:
            self.model = SentenceTransformer(folder, device=str(self.device), model_kwargs={"torch_dtype": dtype})
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise InputError(f"{folder}: cannot load the sentence-transformers model: "
                             f"{str(exc).splitlines()[0]}") from None
        self.model.eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.max_seq_length = int(self.model.max_seq_length)
        tokenizer = self.model.tokenizer
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
        self.where = f"{self.device}" + (f" ({torch.cuda.get_device_name(self.device)})"
                                        if self.device.type == "cuda" else "")

    def batch_size(self, requested: int | None) -> int:
        """Windows a forward pass takes: as asked, else 64 on a CPU and, on a GPU, as many as a quarter of its
        memory holds (256 to 4,096, a power of two): a function of the GPU's model, not of what is free at
        the moment, so that a rerun cuts a chunk into the same batches."""
        if requested is not None:
            return requested
        if self.device.type != "cuda":
            return 64
        config = self.model[0].auto_model.config
        per_window = ACTIVATION_BYTES * self.max_seq_length * (config.hidden_size + config.num_attention_heads
                                                               * self.max_seq_length)
        total = torch.cuda.get_device_properties(self.device).total_memory
        fits = max(GPU_BATCH[0], min(GPU_BATCH[1], total // 4 // per_window))
        return int(2 ** int(np.log2(fits)))

    def _features(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
        tensors = {"input_ids": torch.from_numpy(np.asarray(ids, dtype=np.int64)),
                   "attention_mask": torch.from_numpy(np.asarray(mask, dtype=np.int64))}
        if self.token_types:
            tensors["token_type_ids"] = torch.zeros_like(tensors["input_ids"])
        if self.device.type == "cuda":  # from pinned pages, without waiting: the copy overlaps the last batch
            tensors = {name: t.pin_memory().to(self.device, non_blocking=True) for name, t in tensors.items()}
        return tensors

    def encode(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
        """Normalized float32 embeddings (rows, dim) of each (ids, attention mask) batch, in order."""
        pending = None
        with torch.inference_mode():
            for ids, mask in batches:
                output = self.model.forward(self._features(ids, mask))["sentence_embedding"]
                current = torch.nn.functional.normalize(output.float(), dim=1)
                if pending is not None:
                    yield pending.cpu().numpy()
                pending = current
            if pending is not None:
                yield pending.cpu().numpy()
