"""Backend-agnostic model description: shapes, named presets, TOML specs, parameter counts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pnlm import values
from pnlm.errors import SpecError
from pnlm.files.toml_file import read_toml

# Bounds that make a hostile or mistyped config fail before anything is allocated.
MAX_VOCAB = 1 << 21
MAX_DIM = 1 << 16
MAX_LAYERS = 512
MAX_HEADS = 1024
MAX_CONTEXT = 1 << 20
MAX_EXPERTS = 1 << 16
MAX_PARAMS = 200_000_000_000
MAX_SPEC_BYTES = 1 << 20
DEFAULT_EXPERT_SIMILARITY = 0.9  # docs/results/pn-ablation.md
PROJECTION_INITS = ("unit-variance", "matched")  # docs/projected.md, docs/results/pn-ablation.md section 7


@dataclass(frozen=True)
class Projection:
    """Projected MLP weights W(l,i) = sum_q E[i,q] sum_r M(l)[q,r] T(l)[r] (docs/projected.md).

    h: basis tensors per projected matrix, k: experts (clusters), m: width of the expert embedding E.
    expert_similarity: how alike the experts start (initialization only). Every row of E starts as
    sqrt(c) u + sqrt(1 - c) g_i, with u shared and g_i the expert's own unit vector orthogonal to u, so two
    experts' embeddings start at cosine c on average: near one shared model, so that what one cluster
    teaches the MLPs reaches the others (docs/projected.md). 0 gives independent random experts.
    init (initialization only): "unit-variance", M's entries of variance 1/h and T at the SLM's scale,
    so that each matrix's experts start at a random multiple of the SLM's scale and AdamW moves them at a
    random multiple of its pace; "matched" rescales each matrix's M and T so that both are the SLM's
    (pnlm.model.projection.init_projection). Measured at `small` (docs/results/pn-ablation.md, section 7),
    matched trained no better: kept for that ablation.
    """

    h: int
    k: int
    m: int
    expert_similarity: float = DEFAULT_EXPERT_SIMILARITY
    init: str = "unit-variance"

    def validate(self) -> None:
        for name in ("h", "k", "m"):
            _check_int(f"projection.{name}", getattr(self, name), 1, MAX_EXPERTS)
        c = self.expert_similarity
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 <= c < 1:
            raise SpecError(f"projection.expert_similarity must be a number in [0, 1), got {c!r}")
        if self.init not in PROJECTION_INITS:
            raise SpecError(f"projection.init must be one of {', '.join(PROJECTION_INITS)}, got {self.init!r}")


@dataclass(frozen=True)
class Soup:
    """A soup of experts (pnlm/model/soup.py, docs/soup.md): every MLP matrix is a shared matrix S plus n expert
    banks E_j, mixed by coefficients alpha(h) that a small network computes from domain weights h over the k
    clusters: W(h) = S + sum_j alpha_j(h) E_j, one ordinary SLM for any h.

    banks: n; k: the clusters h weighs; hidden: the coefficient network's width. Pretraining draws h from a
    meta-distribution: `clusters_per_draw` clusters at random, Dirichlet(`concentration`) weights over them.
    """

    banks: int
    k: int
    hidden: int = 64
    clusters_per_draw: int = 2
    concentration: float = 1.0

    def validate(self) -> None:
        for name, high in (("banks", MAX_EXPERTS), ("k", MAX_EXPERTS), ("hidden", MAX_DIM)):
            _check_int(f"soup.{name}", getattr(self, name), 1, high)
        _check_int("soup.clusters_per_draw", self.clusters_per_draw, 1, self.k)
        c = self.concentration
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c < 1e6:
            raise SpecError(f"soup.concentration must be a positive number, got {c!r}")


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3's RoPE frequency scaling (rope_type "llama3"): wavelengths longer than
    original_context / low_freq_factor are stretched by factor, shorter than original_context /
    high_freq_factor kept, and those between interpolated (pnlm/model/rope.py)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_context: int
    rope_type: str = "llama3"

    def validate(self) -> None:
        if self.rope_type != "llama3":
            raise SpecError(f"rope_scaling.rope_type {self.rope_type!r}: pnlm knows llama3 scaling only")
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
                raise SpecError(f"rope_scaling.{name} must be a positive number, got {value!r}")
        if not self.high_freq_factor > self.low_freq_factor:
            raise SpecError("rope_scaling.high_freq_factor must exceed low_freq_factor")
        _check_int("rope_scaling.original_context", self.original_context, 1, MAX_CONTEXT)


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of a Llama-style transformer (RMSNorm, SwiGLU, rotate-half RoPE, no biases)."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    context: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tied_embeddings: bool = True
    projection: Projection | None = None
    rope_scaling: RopeScaling | None = None  # imported Llama 3 models; pnlm's own presets use plain RoPE
    soup: Soup | None = None  # a soup of experts (pnlm/model/soup.py): an SLM for any domain weights

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> "ModelSpec":
        _check_int("vocab_size", self.vocab_size, 2, MAX_VOCAB)
        _check_int("d_model", self.d_model, 1, MAX_DIM)
        _check_int("n_layers", self.n_layers, 1, MAX_LAYERS)
        _check_int("n_heads", self.n_heads, 1, MAX_HEADS)
        _check_int("n_kv_heads", self.n_kv_heads, 1, MAX_HEADS)
        _check_int("d_ff", self.d_ff, 1, MAX_DIM * 8)
        _check_int("context", self.context, 1, MAX_CONTEXT)
        if self.d_model % self.n_heads:
            raise SpecError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise SpecError(f"head dimension d_model/n_heads = {self.head_dim} must be even for RoPE")
        if self.n_heads % self.n_kv_heads:
            raise SpecError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e12:
                raise SpecError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.tied_embeddings, bool):
            raise SpecError(f"tied_embeddings must be true or false, got {self.tied_embeddings!r}")
        if self.projection is not None:
            self.projection.validate()
        if self.soup is not None:
            if self.projection is not None:
                raise SpecError("a model is a projected network or a soup of experts, not both")
            self.soup.validate()
        if self.rope_scaling is not None:
            self.rope_scaling.validate()
        total = self.params_pretrain()
        if total > MAX_PARAMS:
            raise SpecError(f"spec asks for {total:,} parameters, more than the limit of {MAX_PARAMS:,}")
        return self

    # Parameter counts come from the shapes alone: nothing is allocated.
    def _attention_params(self) -> int:
        kv = self.n_kv_heads * self.head_dim
        return 2 * self.d_model * self.d_model + 2 * self.d_model * kv

    def _mlp_params(self) -> int:
        return 3 * self.d_model * self.d_ff

    def _projected_mlp_params(self) -> int:
        p = self.projection
        assert p is not None
        return 3 * (p.h * self.d_model * self.d_ff + p.m * p.h)

    def params_inference(self) -> int:
        """Parameters of the model that runs: for a projected network, one instantiated expert."""
        per_layer = self._attention_params() + self._mlp_params() + 2 * self.d_model
        embeddings = self.vocab_size * self.d_model * (1 if self.tied_embeddings else 2)
        return self.n_layers * per_layer + embeddings + self.d_model

    def mlp_params(self) -> int:
        """The MLP weights of the model that runs (what a projected network's projection multiplies)."""
        return self.n_layers * self._mlp_params()

    def mlp_share(self) -> float:
        """The MLPs' share of the inference parameters: about half in the paper's SLM (0.505 at 32k pieces)."""
        return self.mlp_params() / self.params_inference()

    def params_pretrain(self) -> int:
        """Parameters trained during pretraining (all experts' bases, mixes and embeddings for a PN; the shared
        matrices, the banks and the coefficient network for a soup)."""
        if self.soup is not None:
            s = self.soup
            coefficient_net = s.hidden * s.k + s.hidden + s.banks * s.hidden + s.banks
            return self.params_inference() + s.banks * self.mlp_params() + coefficient_net
        if self.projection is None:
            return self.params_inference()
        per_layer = self._attention_params() + self._projected_mlp_params() + 2 * self.d_model
        embeddings = self.vocab_size * self.d_model * (1 if self.tied_embeddings else 2)
        expert_embedding = self.projection.k * self.projection.m
        return self.n_layers * per_layer + embeddings + self.d_model + expert_embedding

    def with_projection(self, projection: Projection | None) -> "ModelSpec":
        return dataclasses.replace(self, projection=projection).validate()

    def plain(self) -> "ModelSpec":
        """The spec of one instantiated expert: the same model without the projection (or the soup)."""
        return dataclasses.replace(self, projection=None, soup=None)

    def with_soup(self, soup: Soup | None) -> "ModelSpec":
        return dataclasses.replace(self, soup=soup).validate()

    def with_vocab(self, vocab_size: int) -> "ModelSpec":
        return dataclasses.replace(self, vocab_size=vocab_size).validate()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("rope_scaling", "soup"):  # absent, as in every spec written before they existed
            if data[name] is None:
                data.pop(name)
        if data["projection"] is not None and data["projection"]["init"] == "unit-variance":
            data["projection"].pop("init")  # the default: a spec an earlier pnlm reads too
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "spec") -> "ModelSpec":
        if not isinstance(data, dict):
            raise SpecError(f"{source}: expected a table of model settings, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SpecError(f"{source}: unknown model setting(s) {', '.join(unknown)}; expected some of {', '.join(sorted(names))}")
        values = dict(data)
        projection = values.get("projection")
        if projection is not None:
            if not isinstance(projection, dict) or not {"h", "k", "m"} <= set(projection) <= PROJECTION_KEYS:
                raise SpecError(f"{source}: projection must be a table with h, k and m (and optionally "
                                f"{', '.join(sorted(PROJECTION_KEYS - {'h', 'k', 'm'}))})")
            values["projection"] = Projection(**projection)
        soup = values.get("soup")
        if soup is not None:
            fields = {f.name for f in dataclasses.fields(Soup)}
            if not isinstance(soup, dict) or not {"banks", "k"} <= set(soup) <= fields:
                raise SpecError(f"{source}: soup must be a table with banks and k (and optionally "
                                f"{', '.join(sorted(fields - {'banks', 'k'}))})")
            values["soup"] = Soup(**soup)
        scaling = values.get("rope_scaling")
        if scaling is not None:
            fields = {f.name for f in dataclasses.fields(RopeScaling)}
            if not isinstance(scaling, dict) or not set(scaling) <= fields or not fields - {"rope_type"} <= set(scaling):
                raise SpecError(f"{source}: rope_scaling must be a table with {', '.join(sorted(fields))}")
            values["rope_scaling"] = RopeScaling(**scaling)
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.name not in values)
        if missing:
            raise SpecError(f"{source}: missing model setting(s) {', '.join(missing)}")
        try:
            spec = cls(**values)
            return spec.validate()
        except SpecError as exc:
            raise SpecError(f"{source}: {exc}") from None


@dataclass(frozen=True)
class OptimizerSpec:
    """AdamW with bias correction (both backends), global-norm gradient clipping.

    Defaults are the paper's: Adam, lr 1e-4, clip 5.0. Weight decay, when set, applies to every parameter
    in both backends, so they stay numerically the same.
    """

    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 5.0

    def validate(self) -> "OptimizerSpec":
        """A learning rate above 0 (gradient descent, not ascent), every setting finite and in range."""
        values.real("--lr", self.lr, 0.0, above=True)
        values.real("beta1", self.beta1, 0.0, 1.0)
        values.real("beta2", self.beta2, 0.0, 1.0)
        values.real("eps", self.eps, 0.0, above=True)
        values.real("weight decay", self.weight_decay, 0.0)
        values.real("clip norm", self.clip_norm, 0.0, above=True)
        return self


PROJECTION_KEYS = {field.name for field in dataclasses.fields(Projection)}


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise SpecError(f"{name} must be between {low:,} and {high:,}, got {value:,}")


# vocab_size in a preset is a default for `pnlm info --model`; init and pretrain take it
# from the tokenizer or the token store. slm-126m and llm-771m keep the paper's
# d_model, layers, heads and context; d_ff is chosen for SwiGLU (three matrices) so that
# the parameter count, with tied embeddings and a 32,000-piece vocabulary, matches the
# paper's table 1 (126M, 771M).
PRESETS: dict[str, ModelSpec] = {
    "tiny": ModelSpec(vocab_size=512, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2,
                      d_ff=352, context=256),
    "slm-126m": ModelSpec(vocab_size=32000, d_model=1024, n_layers=7, n_heads=8, n_kv_heads=8,
                          d_ff=2944, context=1024),
    "llm-771m": ModelSpec(vocab_size=32000, d_model=2816, n_layers=7, n_heads=22, n_kv_heads=22,
                          d_ff=7744, context=1024),
}
# Projected networks: the paper publishes k=32 and 1,422M pretraining parameters for SLM-126M-sized
# experts, not h and m. With SwiGLU MLPs (63.3M of slm-126m's weights), h=21 basis tensors per matrix
# give 1,391.6M (-2.1%); m=16 lets the 32 experts share a 16-dimensional embedding (docs/projected.md).
PRESETS["pn-126m"] = dataclasses.replace(PRESETS["slm-126m"], projection=Projection(h=21, k=32, m=16))
PRESETS["pn-tiny"] = dataclasses.replace(PRESETS["tiny"], projection=Projection(h=4, k=4, m=4))
# The paper's proportions at a size two CPU cores train: in `small` the MLPs are 54% of the weights at 4,096
# pieces (43% at 8,192; slm-126m: 50% at 32,000), where in `tiny` the embedding is most of them and a
# projected network has little to specialize (docs/results/pn-ablation.md, section 6). `llm-small` is 6.0x
# `small` at 4,096 pieces (llm-771m is 6.1x slm-126m), with the paper's LLM's full multi-head attention and
# an MLP share of 62% (llm-771m: 59%). `pn-small`: h = 4 bases per MLP matrix, k = 8 experts, m = 4
# (pretraining 2.6x small's parameters; k follows the clusters it is trained on).
PRESETS["small"] = ModelSpec(vocab_size=4096, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, d_ff=704,
                             context=512)
PRESETS["pn-small"] = dataclasses.replace(PRESETS["small"], projection=Projection(h=4, k=8, m=4))
# A soup of `small`: 4 banks over the MLPs (pretraining 3.2x small's parameters), the coefficient network 64
# wide; each step's domain weights over 2 clusters drawn at random, Dirichlet(1) (docs/soup.md). k follows the
# clusters it is trained on.
PRESETS["soup-small"] = dataclasses.replace(PRESETS["small"], soup=Soup(banks=4, k=8))
PRESETS["llm-small"] = ModelSpec(vocab_size=4096, d_model=640, n_layers=4, n_heads=10, n_kv_heads=10, d_ff=1920,
                                 context=512)


def load_spec(name_or_path: str | Path) -> ModelSpec:
    """A preset by name, or a TOML file with a [model] table (or the settings at top level)."""
    key = str(name_or_path)
    if key in PRESETS:
        return PRESETS[key]
    path = Path(key)
    if not path.suffix == ".toml":
        raise SpecError(f"unknown model {key!r}: expected a preset ({', '.join(PRESETS)}) or a .toml file")
    data = read_toml(path, MAX_SPEC_BYTES, SpecError, "spec file")
    table = data.get("model", data)
    preset = table.pop("preset", None) if isinstance(table, dict) else None
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise SpecError(f"{path}: unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
        table = {**dataclasses.asdict(PRESETS[preset]), **table}
    return ModelSpec.from_dict(table, source=str(path))
