"""Hugging Face interop: an exported checkpoint loads unchanged in transformers and mlx-lm with pnlm's
logits, greedy text and token ids; importing the export gives the model back."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pnlm
from conftest import SAMPLE_DATA
from pnlm.backends import make_train_step
from pnlm.checkpoints.checkpoint import save_checkpoint
from pnlm.model.spec import OptimizerSpec
from pnlm.checkpoints.weights import init_weights

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pnlm_cli(*args):
    return subprocess.run([sys.executable, "-m", "pnlm.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer, tiny_spec):
    """A tiny model trained a little on one repeated batch, so that its greedy choices are clear-cut."""
    step = make_train_step("torch", tiny_spec, init_weights(tiny_spec, 0), OptimizerSpec(lr=1e-2))
    text = " ".join(next(iter(json.loads(line)["text"] for line in gzip.open(SAMPLE_DATA[0], "rt"))).split()[:400])
    ids = np.array(tokenizer.encode(text)[:257])[None, :].repeat(2, 0)
    for _ in range(30):
        step(ids[:, :-1], ids[:, 1:])
    return save_checkpoint(tmp_path_factory.mktemp("hf") / "model", tiny_spec, step.canonical_weights(), tokenizer)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf"
    result = pnlm_cli("export", trained, "--format", "hf", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def test_transformers_loads_the_export_with_the_same_logits_and_ids(trained, exported):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = pnlm.load(trained, backend="torch")
    tokens = np.random.default_rng(0).integers(0, model.spec.vocab_size, (2, 64))
    hf = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32)
    with torch.no_grad():
        logits = hf(torch.from_numpy(tokens)).logits.numpy()
    assert np.abs(logits - model.logits(tokens)).max() < 1e-4
    hf_tokenizer = AutoTokenizer.from_pretrained(exported)
    lines = [line for path in SAMPLE_DATA for doc in (json.loads(x)["text"] for x in gzip.open(path, "rt"))
             for line in doc.splitlines() if line.strip()][:1000]
    assert len(lines) == 1000
    # Leading whitespace (code) is where a Metaspace pre-tokenizer and SentencePiece part ways.
    lines += ["   indented(code)", " one leading space", "\ttab first", "two  inner   spaces ", "    "]
    assert [hf_tokenizer(line)["input_ids"] for line in lines] == [model.tokenizer.encode(line) for line in lines]


def test_mlx_lm_loads_the_export_with_the_same_logits_and_greedy_text(trained, exported):
    import mlx.core as mx
    from mlx_lm import load, stream_generate

    model = pnlm.load(trained, backend="mlx")
    tokens = np.random.default_rng(1).integers(0, model.spec.vocab_size, (2, 64))
    theirs, tokenizer = load(str(exported))
    assert np.abs(np.array(theirs(mx.array(tokens))) - model.logits(tokens)).max() < 1e-4
    prompt = model.tokenizer.encode("It is a truth universally acknowledged")
    ours = list(model.generate_ids(prompt, 32))
    generated = [response.token for response in stream_generate(theirs, tokenizer, prompt, max_tokens=32)]
    assert len(ours) == 32 and generated == ours


def test_import_of_the_export_is_the_model(trained, exported, tmp_path):
    result = pnlm_cli("import", exported, "--out", tmp_path / "back")
    assert result.returncode == 0, result.stderr
    tokens = np.random.default_rng(2).integers(0, 100, (1, 48))
    for backend in ("torch", "mlx"):
        a = pnlm.load(trained, backend=backend).logits(tokens)
        b = pnlm.load(tmp_path / "back", backend=backend).logits(tokens)
        assert np.array_equal(a, b)


def test_export_refuses_what_is_not_a_plain_model(tmp_path, tokenizer, tiny_spec):
    import dataclasses

    from pnlm.model.spec import Projection

    spec = dataclasses.replace(tiny_spec, projection=Projection(h=2, k=2, m=2)).validate()
    save_checkpoint(tmp_path / "pn", spec, init_weights(spec, 0), tokenizer, "pn")
    refused = pnlm_cli("export", tmp_path / "pn", "--out", tmp_path / "x")
    assert refused.returncode == 2 and "pnlm instantiate" in refused.stderr
    (tmp_path / "notllama").mkdir()
    (tmp_path / "notllama" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    refused = pnlm_cli("import", tmp_path / "notllama", "--out", tmp_path / "y")
    assert refused.returncode == 2 and "Llama" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("change, fragment", [
    ({"num_attention_heads": 0}, "num_attention_heads must be a whole number >= 1, not 0"),
    ({"rope_theta": "10000"}, "rope_theta must be a finite number > 0, not '10000'"),
    ({"rope_scaling": [1, 2]}, "rope_scaling must be a JSON object, not [1, 2]"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false, not 'false'"),
    ({"hidden_size": True}, "hidden_size must be a whole number >= 1, not True"),
    ({"intermediate_size": None}, "intermediate_size must be a whole number >= 1, not None"),
])
def test_import_refuses_a_hostile_config_in_one_line(exported, tmp_path, change, fragment):
    import shutil

    folder = tmp_path / "hf"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    refused = pnlm_cli("import", folder, "--out", tmp_path / "out")
    assert refused.returncode == 2 and f"{folder / 'config.json'}: {fragment}" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_import_refuses_a_broken_shard_index_in_one_line(exported, tmp_path):
    import shutil

    folder = tmp_path / "hf"
    shutil.copytree(exported, folder)
    for text in ('{"weight_map": {"model.norm.weight": "mod', '{"weight_map": ["model.safetensors"]}',
                 '{"weight_map": {"model.norm.weight": "../../etc/passwd"}}'):
        (folder / "model.safetensors.index.json").write_text(text)
        refused = pnlm_cli("import", folder, "--out", tmp_path / "out")
        assert refused.returncode == 2 and "model.safetensors.index.json: " in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1


def test_a_hub_id_without_network_is_one_line(tmp_path):
    # Offline (and an empty cache): the id cannot be resolved; one line naming it, exit 2, nothing written.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run([sys.executable, "-m", "pnlm.cli", "import", "someone/a-small-llama", "--out",
                             str(tmp_path / "imported")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "someone/a-small-llama" in lines[0] and "Hugging Face Hub" in lines[0], lines
    assert "Traceback" not in result.stderr and not (tmp_path / "imported").exists()


SHARED_CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def corpus_lines(count: int) -> list[str]:
    """count non-empty lines of the shared corpora, as many from each domain (code keeps its indentation)."""
    files = sorted(SHARED_CORPORA.glob("*.jsonl.gz"))
    lines: list[str] = []
    for file in files:
        taken: list[str] = []
        with gzip.open(file, "rt", encoding="utf-8") as f:
            for record in f:
                taken += [line for line in json.loads(record)["text"].split("\n") if line.strip()]
                if len(taken) >= count // len(files) + 1:
                    break
        lines += taken[:count // len(files) + (1 if len(lines) < count % len(files) else 0)]
    return lines[:count]


def write_bpe_tokenizer_json(folder: Path) -> int:
    """A byte-level BPE tokenizer.json (as Llama 3 ships, no tokenizer.model) with BOS first; its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    documents = [json.loads(line)["text"] for path in SAMPLE_DATA for line in gzip.open(path, "rt")][:60]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(documents, trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    bpe.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", 0)])
    folder.mkdir(parents=True, exist_ok=True)
    bpe.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>"}))
    return bpe.get_vocab_size()


def test_a_llama3_folder_with_tokenizer_json_scaled_rope_and_bfloat16_shards_imports_fine_tunes_and_exports(tmp_path):
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "llama3"
    vocab = write_bpe_tokenizer_json(folder)
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_parameters=rope, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(str(folder), max_shard_size="100KB")
    assert len(list(folder.glob("model-*.safetensors"))) >= 2 and not (folder / "tokenizer.model").exists()
    reference = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tokens = np.random.default_rng(0).integers(2, vocab, (2, 200))  # well past the 64 positions
    with torch.no_grad():
        theirs = reference(torch.from_numpy(tokens)).logits.numpy()

    result = pnlm_cli("import", folder, "--out", tmp_path / "imported")
    assert result.returncode == 0, result.stderr
    ckpt = tmp_path / "imported"
    for backend in ("torch", "mlx"):
        ours = pnlm.load(ckpt, backend=backend).logits(tokens)
        assert np.abs(ours - theirs).max() < 1e-4, (backend, np.abs(ours - theirs).max())
    model = pnlm.load(ckpt, backend="torch")
    assert model.spec.rope_scaling is not None and model.spec.rope_scaling.original_context == 64

    # 1,000 lines of the shared corpora (CI has them beside the repository), else of the sample books.
    lines = corpus_lines(1000) if SHARED_CORPORA.is_dir() else [
        line for path in SAMPLE_DATA for record in gzip.open(path, "rt")
        for line in json.loads(record)["text"].split("\n") if line.strip()][:1000]
    assert len(lines) == 1000
    hf_tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert [model.tokenizer.encode(line) for line in lines] == hf_tokenizer(lines)["input_ids"]
    assert model.tokenizer.decode(model.tokenizer.encode(lines[0])) == lines[0]

    # The scaling matters at these positions: the same weights with plain RoPE are far off.
    plain = tmp_path / "plain"
    shutil.copytree(folder, plain)
    hf = json.loads((plain / "config.json").read_text())
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    hf.pop("rope_scaling", None)
    (plain / "config.json").write_text(json.dumps(hf))
    unscaled = pnlm.load(pnlm.import_hf(plain, tmp_path / "plain-imported"), backend="torch").logits(tokens)
    assert np.abs(unscaled - theirs).max() > 1e-3  # measured 4.4e-3 (random weights: small logits)

    # An imported model is a checkpoint like any other: its tokenizer prepares data, MLX fine-tunes it.
    store = pnlm.prepare([SAMPLE_DATA[0]], ckpt, 64, tmp_path / "store", valid_fraction=0.1, test_fraction=0.1)
    assert store.store.tokenizer().sha256 == model.tokenizer.sha256
    pnlm.finetune(ckpt, tmp_path / "store", tmp_path / "run", backend="mlx", steps=20, batch_size=4, lr=1e-3,
                  eval_every=10, early_stop=False)
    tuned = pnlm.load(tmp_path / "run" / "latest", backend="mlx")
    exported = pnlm.export_hf(tmp_path / "run" / "latest", tmp_path / "exported")
    again = LlamaForCausalLM.from_pretrained(str(exported), dtype=torch.float32).eval()
    with torch.no_grad():
        assert np.abs(again(torch.from_numpy(tokens)).logits.numpy() - tuned.logits(tokens)).max() < 1e-4
    assert np.abs(tuned.logits(tokens) - theirs).max() > 1e-3  # the fine-tune changed the model
    assert AutoTokenizer.from_pretrained(str(exported))(lines[:50])["input_ids"] == hf_tokenizer(lines[:50])["input_ids"]
