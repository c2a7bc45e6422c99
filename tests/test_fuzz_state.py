"""Hostile input, continued: the folders and state files a user can hand back to pnlm (tests/fuzzing.py
says what passes). A Hugging Face folder to import (its config.json and shard index), a run's trainer.json
and optimizer state (resumed into a real torch model), a LoRA adapter folder, a mixture's mix.json.
Changed files are resealed in their manifest, as a careful forger would, so the parsing behind the
hash check is what gets tested."""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ, Outcomes, cuts, edits, hostile_json, json_values, mutate, resealed, safetensors_bytes
from pnlm.checkpoints.adapter_checkpoint import load_adapter_checkpoint, save_adapter_checkpoint
from pnlm.checkpoints.checkpoint import ModelWriter, load_checkpoint, save_checkpoint
from pnlm.methods.mixture import read_mix_file, write_mix_file
from pnlm.checkpoints.hf import export_hf, import_hf
from pnlm.model.lora import LoraSpec, init_adapters
from pnlm.checkpoints.run_identity import check_same_run
from pnlm.model.spec import ModelSpec, OptimizerSpec, load_spec
from pnlm.checkpoints.weights import init_weights

HF_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "intermediate_size", "max_position_embeddings", "rope_theta", "rms_norm_eps",
           "tie_word_embeddings", "head_dim", "rope_scaling", "rope_parameters", "attention_bias", "torch_dtype")
names = st.one_of(st.text(max_size=12), st.sampled_from(["model.safetensors", "../model.safetensors", "/etc/passwd",
                                                         "", ".", "missing.safetensors", "model-00001.safetensors"]))


@pytest.fixture(scope="module")
def scratch():
    folder = Path(tempfile.mkdtemp(prefix="pnlm-fuzz-state-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def micro(tmp_path_factory, tokenizer):
    """A one-layer model checkpoint (the base of the folders below)."""
    spec = ModelSpec.from_dict({**load_spec("tiny").to_dict(), "d_model": 32, "n_layers": 1, "n_heads": 2,
                                "n_kv_heads": 1, "d_ff": 64, "vocab_size": tokenizer.vocab_size})
    return save_checkpoint(tmp_path_factory.mktemp("fuzz-state") / "micro", spec, init_weights(spec), tokenizer)


def fresh_copy(source: Path, folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(source, folder)
    return folder


# --- Hugging Face folders ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_folder(micro, tmp_path_factory):
    return export_hf(micro, tmp_path_factory.mktemp("fuzz-hf") / "hf")


def test_fuzz_hf_import_config(scratch, hf_folder):
    outcomes = Outcomes("Hugging Face import: config.json")
    config = json.loads((hf_folder / "config.json").read_text())
    folder, out = scratch / "hf-config", scratch / "hf-config-imported"

    @FUZZ
    @given(kind=st.integers(0, 2), raw=st.binary(max_size=300),
           changes=st.dictionaries(st.sampled_from(HF_KEYS), json_values, max_size=4),
           sizes=st.dictionaries(st.sampled_from(HF_KEYS[1:8]),
                                 st.sampled_from([0, 1, 2, 3, 2**31, 2**40, 2**63, -1, 1.5, "64", True]), max_size=3))
    def run(kind, raw, changes, sizes):
        fresh_copy(hf_folder, folder)
        if kind == 0:
            (folder / "config.json").write_bytes(raw)
        else:
            (folder / "config.json").write_text(json.dumps({**config, **(changes if kind == 1 else sizes)}))
        outcomes.check(lambda: import_hf(folder, out), str(folder))

    run()
    outcomes.finish()


def test_fuzz_hf_import_shard_index(scratch, hf_folder):
    outcomes = Outcomes("Hugging Face import: model.safetensors.index.json")
    tensors = [name for name in json.loads(
        (hf_folder / "model.safetensors").read_bytes()[8:8 + struct.unpack("<Q", (hf_folder / "model.safetensors")
                                                                            .read_bytes()[:8])[0]]) if "." in name]
    valid = {"metadata": {"total_size": 1}, "weight_map": {name: "model.safetensors" for name in tensors}}
    folder, out = scratch / "hf-index", scratch / "hf-index-imported"

    @FUZZ
    @given(kind=st.integers(0, 3), raw=st.binary(max_size=300), byte_edits=edits, cut=cuts,
           mapping=st.dictionaries(st.one_of(st.sampled_from(tensors), st.text(max_size=12)), names, max_size=4),
           top=st.dictionaries(st.sampled_from(["metadata", "weight_map", "other"]), json_values, max_size=2))
    def run(kind, raw, byte_edits, cut, mapping, top):
        fresh_copy(hf_folder, folder)
        edited = {**valid, "weight_map": {**valid["weight_map"], **mapping}} if kind == 2 else {**valid, **top}
        (folder / "model.safetensors.index.json").write_bytes(hostile_json(kind, raw, valid, byte_edits, cut, edited))
        outcomes.check(lambda: import_hf(folder, out), str(folder))

    run()
    outcomes.finish()


# --- a run's resumable state -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resumable(micro, tmp_path_factory):
    """A checkpoint one torch step in, with its optimizer and trainer state; the step function to restore it
    into; and the identity the run was started with."""
    from backends import make_train_step

    checkpoint = load_checkpoint(micro)
    step_fn = make_train_step("torch", checkpoint.spec, checkpoint.weights, OptimizerSpec())
    tokens = np.random.default_rng(0).integers(0, checkpoint.spec.vocab_size, (2, 9))
    step_fn(tokens[:, :-1], tokens[:, 1:], np.ones((2, 8), dtype=np.float32))
    identity = {"method": "slm", "spec": checkpoint.spec.to_dict(), "tokenizer_sha256": checkpoint.tokenizer.sha256,
                "store_sha256": "0" * 64, "clusters": None}
    trainer = {"step": 1, "tokens": 16, "best_val_loss": None, "evals_since_best": 0, "elapsed_s": 0.5,
               "config": {"batch_size": 2}, "sampler": "uniform", "started_with": identity}
    writer = ModelWriter(checkpoint.spec, checkpoint.tokenizer, "slm")
    folder = tmp_path_factory.mktemp("fuzz-resume") / "latest"
    writer.save(folder, step_fn, trainer, with_state=True, write=True)
    return folder, writer, step_fn, identity


def resume(folder: Path, writer: ModelWriter, step_fn, identity: dict) -> None:
    """What `--resume` does with a run's latest checkpoint before its first step."""
    check_same_run(folder, identity)
    writer.restore(folder, step_fn)


def test_fuzz_trainer_state(scratch, resumable):
    outcomes = Outcomes("run state: trainer.json")
    source, writer, step_fn, identity = resumable
    trainer = json.loads((source / "trainer.json").read_text())
    fields = ["step", "tokens", "best_val_loss", "evals_since_best", "elapsed_s", "config", "sampler", "started_with"]
    folder = scratch / "trainer"

    @FUZZ
    @given(kind=st.integers(0, 3), raw=st.binary(max_size=300), byte_edits=edits, cut=cuts,
           changes=st.dictionaries(st.sampled_from(fields), json_values, max_size=3),
           dropped=st.lists(st.sampled_from(fields), max_size=2),
           identity_changes=st.dictionaries(st.sampled_from([*identity, "spec.d_ff", "spec.other"]), json_values,
                                            max_size=2))
    def run(kind, raw, byte_edits, cut, changes, dropped, identity_changes):
        fresh_copy(source, folder)
        if kind == 2:
            edited = {key: value for key, value in {**trainer, **changes}.items() if key not in dropped}
        else:  # a record of another start: other fields, a spec with other or unknown keys
            recorded = dict(identity)
            for key, value in identity_changes.items():
                if key.startswith("spec.") and isinstance(recorded["spec"], dict):
                    recorded["spec"] = {**recorded["spec"], key[5:]: value}
                else:
                    recorded[key] = value
            edited = {**trainer, "started_with": recorded}
        content = hostile_json(kind, raw, trainer, byte_edits, cut, edited)
        (folder / "trainer.json").write_bytes(content)
        resealed(folder)
        outcomes.check(lambda: resume(folder, writer, step_fn, identity), str(folder))

    run()
    outcomes.finish()


def test_fuzz_optimizer_state(scratch, resumable):
    outcomes = Outcomes("run state: optimizer.safetensors")
    source, writer, step_fn, identity = resumable
    blob = (source / "optimizer.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    header, data = json.loads(blob[8:8 + length]), blob[8 + length:]
    moments = [name for name in header if name != "__metadata__"]
    shape = st.lists(st.one_of(st.integers(0, 2**40), st.sampled_from([0, 1, 32, 64, 2**32, 2**64])), max_size=3)
    entry = st.fixed_dictionaries({}, optional={
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "F64", "U8", ""]),
        "shape": st.one_of(shape, json_values),
        "data_offsets": st.one_of(st.lists(st.integers(-2**40, 2**64), min_size=2, max_size=2), json_values)})
    renamed = st.sampled_from(["model.norm.weight.exp_avg", "model.norm.weight.m", "lm_head.weight.exp_avg",
                               "step", "model.layers.7.mlp.up_proj.weight.exp_avg_sq", "x"])
    folder = scratch / "optimizer"

    @FUZZ
    @given(kind=st.integers(0, 3), byte_edits=edits, cut=cuts,
           changes=st.dictionaries(st.sampled_from(moments), entry, max_size=2),
           dropped=st.lists(st.sampled_from(moments), max_size=2), added=st.lists(renamed, max_size=2))
    def run(kind, byte_edits, cut, changes, dropped, added):
        fresh_copy(source, folder)
        if kind == 0:
            content = mutate(blob, byte_edits, cut)
        elif kind == 1:
            content = safetensors_bytes({**header, **changes}, data)
        else:  # well-formed, but moments missing, or belonging to no weight, or misnamed
            edited = {name: entry for name, entry in header.items() if name not in dropped}
            for name in added if kind == 3 else []:
                edited[name] = header[moments[0]]
            content = safetensors_bytes(edited, data)
        (folder / "optimizer.safetensors").write_bytes(content)
        resealed(folder)
        outcomes.check(lambda: resume(folder, writer, step_fn, identity), str(folder))

    run()
    outcomes.finish()


# --- adapters and mixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def adapter_folder(micro, tmp_path_factory):
    base = load_checkpoint(micro)
    lora = LoraSpec(rank=2, alpha=4.0).validate(base.spec)
    return save_adapter_checkpoint(tmp_path_factory.mktemp("fuzz-adapter") / "adapters", micro, base, lora,
                                   init_adapters(base.spec, lora, 0))


def test_fuzz_adapter_folder(scratch, adapter_folder):
    outcomes = Outcomes("LoRA adapter folder (config.json, adapters.safetensors)")
    config = json.loads((adapter_folder / "config.json").read_text())
    blob = (adapter_folder / "adapters.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    header, data = json.loads(blob[8:8 + length]), blob[8 + length:]
    tensors = [name for name in header if name != "__metadata__"]
    entry = st.fixed_dictionaries({}, optional={
        "dtype": st.sampled_from(["F32", "BF16", "I64", ""]),
        "shape": st.one_of(st.lists(st.sampled_from([0, 1, 2, 32, 64, 2**33, 2**64]), max_size=3), json_values),
        "data_offsets": st.one_of(st.lists(st.integers(-2**40, 2**64), min_size=2, max_size=2), json_values)})
    adapter = st.dictionaries(st.sampled_from(["rank", "alpha", "targets", "other"]),
                              st.one_of(json_values, st.sampled_from([0, 1, 2, 2**40, -1, 1e308, ["q_proj"],
                                                                      ["nothing"], []])), max_size=2)
    folder = scratch / "adapters"

    @FUZZ
    @given(kind=st.integers(0, 4), raw=st.binary(max_size=200), byte_edits=edits, cut=cuts,
           adapter_changes=adapter, base=st.one_of(json_values, st.fixed_dictionaries(
               {"path": st.one_of(names, st.just(str(adapter_folder)), json_values), "sha256": json_values})),
           top=st.dictionaries(st.sampled_from(["format", "version", "method", "spec", "tokenizer"]), json_values,
                               max_size=2),
           changes=st.dictionaries(st.sampled_from([*tensors, "extra.lora_A"]), entry, max_size=2))
    def run(kind, raw, byte_edits, cut, adapter_changes, base, top, changes):
        fresh_copy(adapter_folder, folder)
        if kind == 0:
            (folder / "config.json").write_bytes(raw)
        elif kind == 1:
            edited = {**config, "adapter": {**config["adapter"], **adapter_changes}, **top}
            (folder / "config.json").write_text(json.dumps(edited))
        elif kind == 2:
            (folder / "config.json").write_text(json.dumps({**config, "base": base}))
        elif kind == 3:
            (folder / "adapters.safetensors").write_bytes(safetensors_bytes({**header, **changes}, data))
        else:
            (folder / "adapters.safetensors").write_bytes(mutate(blob, byte_edits, cut))
        resealed(folder)
        outcomes.check(lambda: load_adapter_checkpoint(folder), str(folder))

    run()
    outcomes.finish()


def test_fuzz_mix_description(scratch, micro):
    outcomes = Outcomes("mixture run: mix.json")
    spec = load_checkpoint(micro).spec
    clusters = {"clusters": "/data/clusters", "k": 4, "centroids_sha256": "0" * 64, "embedder": "hashing"}
    folder = scratch / "mix"
    write_mix_file(folder, 4, clusters, spec)
    valid = json.loads((folder / "mix.json").read_text())
    spec_keys = list(valid["spec"])

    @FUZZ
    @given(kind=st.integers(0, 3), raw=st.binary(max_size=300), byte_edits=edits, cut=cuts,
           changes=st.dictionaries(st.sampled_from(["format", "k", "clusters", "spec", "other"]), json_values,
                                   max_size=2),
           cluster_changes=st.dictionaries(st.sampled_from(["clusters", "k", "centroids_sha256"]), st.one_of(
               json_values, st.sampled_from([0, 4, 2**16 + 1, 2**70])), max_size=2),
           spec_changes=st.dictionaries(st.sampled_from([*spec_keys, "other"]), json_values, max_size=2))
    def run(kind, raw, byte_edits, cut, changes, cluster_changes, spec_changes):
        edited = {**valid, **changes} if kind == 2 else {
            **valid, "clusters": {**clusters, **cluster_changes}, "spec": {**valid["spec"], **spec_changes}}
        (folder / "mix.json").write_bytes(hostile_json(kind, raw, valid, byte_edits, cut, edited))

        def read() -> None:  # what `pnlm info` and `pnlm instantiate` take from it
            description = read_mix_file(folder)
            description.k * description.spec.params_pretrain()

        outcomes.check(read, str(folder))

    run()
    outcomes.finish()
