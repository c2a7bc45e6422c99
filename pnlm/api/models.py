"""Models as folders: a random initialization, the plain SLM a domain gets from a projected network or a
hard mixture, LoRA adapters fused into their base, the Hugging Face Llama format both ways, and what a
model is (parameter counts at pretraining and at inference, the paper's table 1).

Each writer refuses an `out` that holds anything pnlm did not write (and pnlm's own output unless
overwrite=True), and writes it whole.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pnlm.checkpoints.adapter_checkpoint import fuse_checkpoint
from pnlm.files.atomic import atomic_dir
from pnlm.backend_loader import convert_to_mlx
from pnlm.checkpoints.checkpoint import read_spec, save_checkpoint, verify_checkpoint
from pnlm import values
from pnlm.errors import PnlmError
from pnlm.methods.experts import Instantiated
from pnlm.checkpoints.hf import export_hf as write_hf, import_hf as read_hf
from pnlm.training.memory import check_fits, init_estimate
from pnlm.methods import mixture, projected, soup
from pnlm.files.outputs import ADAPTER, CHECKPOINT, writing_output
from pnlm.checkpoints.peft_adapters import read_peft, write_peft
from pnlm.model.spec import ModelSpec, load_spec
from pnlm.tokenizer import HF_TOKENIZER_CONFIG, HF_TOKENIZER_FILE, TOKENIZER_FILE, load_tokenizer
from pnlm.checkpoints.weights import init_weights

PathLike = str | Path


@dataclass
class InitResult:
    out: Path
    spec: ModelSpec

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "params_inference": self.spec.params_inference(),
                "vocab_size": self.spec.vocab_size}


def init(model: PathLike, tokenizer: PathLike, out: PathLike, *, seed: int = 0, overwrite: bool = False) -> InitResult:
    """A randomly initialized checkpoint of a preset or spec.toml (weights drawn in numpy: the same seed
    gives the same model on every backend); its vocabulary is the tokenizer's."""
    values.seed(seed)
    with writing_output(out, CHECKPOINT, overwrite, [tokenizer]):
        tok = load_tokenizer(tokenizer)
        spec = load_spec(str(model)).with_vocab(tok.vocab_size)
        check_fits(init_estimate(spec), f"--model {model}", advice="choose a smaller model")
        save_checkpoint(out, spec, init_weights(spec, seed), tok, extra={"seed": seed})
    return InitResult(Path(out), spec)


@dataclass
class InstantiateResult:
    out: Path
    instantiated: Instantiated

    @property
    def report(self) -> dict[str, Any]:
        """Which expert, why (the domain's histogram, top cluster, share, entropy), from which run."""
        return self.instantiated.report

    def to_json(self) -> dict[str, Any]:
        return {**self.report, "out": str(self.out), "params": self.instantiated.spec.params_inference()}


def instantiate(run: PathLike, out: PathLike, *, domain: PathLike | None = None, expert: str | int = "auto",
                overwrite: bool = False) -> InstantiateResult:
    """The plain SLM a domain gets from a projected-network, hard-mixture or soup run, written as an ordinary
    checkpoint to fine-tune: expert "auto" (the domain's most frequent cluster; a soup: its histogram's
    model), an index, or "histogram" (a projected network's experts mixed by the domain's histogram, E_p = p @ E;
    a soup's model for the histogram)."""
    run = Path(run)
    with writing_output(out, CHECKPOINT, overwrite, [run, domain]):
        module = mixture if (run / mixture.MIX_FILE).is_file() else soup if soup.is_soup_run(run) else projected
        chosen = module.instantiate(run, domain, str(expert))
        save_checkpoint(out, chosen.spec, chosen.weights, chosen.tokenizer, chosen.method,
                        extra={"instantiated_from": chosen.report})
    return InstantiateResult(Path(out), chosen)


def fuse(adapters: PathLike, out: PathLike, *, base: PathLike | None = None, overwrite: bool = False) -> Path:
    """LoRA adapters merged into their base: a plain checkpoint, W + (alpha/rank)·B·A in every adapted layer.
    base: the base checkpoint, if it moved since training."""
    with writing_output(out, CHECKPOINT, overwrite, [adapters, base]):
        return fuse_checkpoint(adapters, out, base)


def export_hf(checkpoint: PathLike, out: PathLike) -> Path:
    """A plain checkpoint as a Hugging Face Llama folder (transformers, mlx-lm). A Hugging Face folder
    carries no mark of who wrote it: an existing one is never replaced."""
    with writing_output(out, "Hugging Face folder", False, [checkpoint]):
        return write_hf(checkpoint, out)


MLX_BITS = (4, 8)


def export_mlx(checkpoint: PathLike, out: PathLike, *, quantize: int | None = None, group_size: int = 64) -> Path:
    """A plain checkpoint as an MLX model folder, through mlx-lm's own conversion: quantize=4 or 8 packs
    every linear and embedding layer whose input width group_size divides (mlx-lm's rule; the others stay
    float32), with a scale and a bias per group of group_size weights. mlx_lm.load, mlx_lm.generate and
    mlx_lm.server use the folder as it is, and so do pnlm.load(out, backend="mlx") and `pnlm generate`."""
    if quantize is not None and quantize not in MLX_BITS:
        raise PnlmError(f"--quantize {quantize}: expected 4 or 8 (bits per weight)")
    if group_size not in (32, 64, 128):
        raise PnlmError(f"--group-size {group_size}: expected 32, 64 or 128")
    out = Path(out)
    with writing_output(out, "MLX model folder", False, [checkpoint]):
        with atomic_dir(out) as tmp:
            hf = write_hf(checkpoint, tmp / "hf")
            convert_to_mlx(hf, tmp / "mlx", quantize, group_size)
            for entry in (tmp / "mlx").iterdir():
                entry.rename(tmp / entry.name)
            # pnlm's own tokenizer files, as written (mlx-lm's conversion saves them anew through transformers),
            # so that pnlm.load and a store prepared with the model's tokenizer agree on its sha256.
            for name in (TOKENIZER_FILE, HF_TOKENIZER_FILE, HF_TOKENIZER_CONFIG):
                if (hf / name).is_file() and (name == TOKENIZER_FILE or not (hf / TOKENIZER_FILE).is_file()):
                    shutil.copyfile(hf / name, tmp / name)
            shutil.rmtree(hf)
            (tmp / "mlx").rmdir()
    return out


def export_peft(adapters: PathLike, out: PathLike) -> Path:
    """LoRA adapters (an adapter folder) as a PEFT adapter, with their base beside them as a Hugging Face
    Llama folder (out/base): `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out/base), out)`.
    Like a Hugging Face folder, an existing out is never replaced."""
    with writing_output(out, "PEFT adapter folder", False, [adapters]):
        return write_peft(adapters, out)


def import_peft(folder: PathLike, base: PathLike, out: PathLike, *, overwrite: bool = False) -> Path:
    """A PEFT LoRA adapter of a Llama model (adapter_config.json, adapter_model.safetensors) as a pnlm
    adapter folder on the pnlm checkpoint `base` (of the same shape): fine-tune, evaluate or fuse it."""
    with writing_output(out, ADAPTER, overwrite, [folder, base]):
        return read_peft(folder, base, out)


def import_hf(folder: PathLike, out: PathLike, *, overwrite: bool = False) -> Path:
    """A local Hugging Face Llama folder (safetensors, one file or shards, and tokenizer.model or tokenizer.json) as a
    pnlm checkpoint."""
    with writing_output(out, CHECKPOINT, overwrite, [folder]):
        return read_hf(folder, out)


@dataclass
class ModelInfo:
    """What a model is: its spec, and its parameters at pretraining and at inference (a projected network
    trains all its experts' bases and runs one; a mixture of k trains k models and runs one)."""

    spec: ModelSpec
    params_pretrain: int
    params_inference: int
    source: dict[str, Any]  # checkpoint (with its method and tokenizer) or model (a preset or spec file)
    experts: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = {**self.source, "params_pretrain": self.params_pretrain, "params_inference": self.params_inference,
                "mlp_params": self.spec.mlp_params(), "mlp_share": round(self.spec.mlp_share(), 4),
                "spec": self.spec.to_dict()}
        if self.experts is not None:
            data["experts"] = self.experts
        return data


def info(checkpoint: PathLike | None = None, *, model: str | None = None, vocab_size: int | None = None,
         experts: int | None = None) -> ModelInfo:
    """Parameter counts and spec of a checkpoint, a mixture run, or a preset/spec.toml (model=), computed
    without building the model. experts: with model=, a hard mixture of this many copies."""
    if (checkpoint is None) == (model is None):
        raise PnlmError("give a checkpoint folder or --model PRESET, not both and not neither")
    source: dict[str, Any]
    if checkpoint is not None and (Path(checkpoint) / mixture.MIX_FILE).is_file():
        description = mixture.read_mix_file(Path(checkpoint))
        spec, experts = description.spec, description.k
        source = {"checkpoint": str(checkpoint), "method": "mix"}
    elif checkpoint is not None:
        config = verify_checkpoint(checkpoint)
        spec = read_spec(checkpoint, config)
        source = {"checkpoint": str(checkpoint), "method": config.get("method"),
                  "tokenizer_sha256": config.get("tokenizer", {}).get("sha256")}
    else:
        spec = load_spec(model)
        if vocab_size is not None:
            spec = spec.with_vocab(vocab_size)
        source = {"model": model}
    pretrain_params = spec.params_pretrain()
    if experts is not None:
        if experts < 1 or spec.projection is not None:
            raise PnlmError("--experts counts a mixture of plain models: a positive number, and a spec without projection")
        pretrain_params = experts * spec.params_pretrain()
    return ModelInfo(spec, pretrain_params, spec.params_inference(), source, experts)
