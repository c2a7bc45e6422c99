import json
import subprocess
import sys

import pytest

from pnlm.errors import SpecError
from pnlm.model.spec import PRESETS, ModelSpec, Projection, load_spec


def pnlm_cli(*args):
    return subprocess.run([sys.executable, "-m", "pnlm.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("preset, paper", [("slm-126m", 126e6), ("llm-771m", 771e6)])
def test_paper_presets_match_table_1_within_2_percent(preset, paper):
    result = pnlm_cli("info", "--model", preset, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert abs(report["params_inference"] - paper) / paper < 0.02
    assert report["params_pretrain"] == report["params_inference"]
    assert report["spec"]["n_layers"] == 7 and report["spec"]["context"] == 1024


def test_paper_shapes():
    slm, llm = PRESETS["slm-126m"], PRESETS["llm-771m"]
    assert (slm.d_model, slm.n_heads, llm.d_model, llm.n_heads) == (1024, 8, 2816, 22)


def test_param_count_equals_allocated_model(tiny_spec):
    from pnlm.checkpoints.weights import init_weights

    for spec in (tiny_spec, ModelSpec(**{**tiny_spec.to_dict(), "tied_embeddings": False, "projection": None})):
        assert sum(a.size for a in init_weights(spec).values()) == spec.params_inference()


def test_projection_counts_pretrain_apart_from_inference(tiny_spec):
    spec = ModelSpec(**{**tiny_spec.to_dict(), "projection": None})
    projected = ModelSpec(**{**spec.to_dict(), "projection": Projection(h=8, k=4, m=4)}).validate()
    # Per layer, three projected matrices of h=8 bases (one of which a plain model has anyway) and M of m*h;
    # plus E of k*m.
    extra_per_layer = 3 * (8 - 1) * spec.d_model * spec.d_ff + 3 * 4 * 8
    assert projected.params_inference() == spec.params_inference()
    assert projected.params_pretrain() - spec.params_pretrain() == spec.n_layers * extra_per_layer + 4 * 4


def test_toml_spec_with_preset_and_override(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text('[model]\npreset = "tiny"\nn_layers = 3\n[model.projection]\nh = 4\nk = 8\nm = 2\n')
    spec = load_spec(path)
    assert spec.n_layers == 3 and spec.projection == Projection(4, 8, 2) and spec.d_model == PRESETS["tiny"].d_model


@pytest.mark.parametrize("text, message", [
    ("[model]\npreset = 'tiny'\nd_model = 130\n", "multiple of n_heads"),
    ("[model]\npreset = 'tiny'\nvocab_size = 1000000000000\n", "vocab_size"),
    ("[model]\npreset = 'tiny'\nlayers = 3\n", "unknown model setting"),
    ("[model]\nd_model = 64\n", "missing model setting"),
    ("[model\n", "not valid TOML"),
    ("[model]\npreset = 'tiny'\nn_layers = 'two'\n", "n_layers must be an integer"),
])
def test_bad_toml_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "spec.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message) as info:
        load_spec(path)
    assert str(path) in str(info.value)
    result = pnlm_cli("info", "--model", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "Traceback" not in result.stderr


def test_absurd_sizes_refused():
    with pytest.raises(SpecError, match="parameters"):
        ModelSpec(vocab_size=2_000_000, d_model=65536, n_layers=512, n_heads=512, n_kv_heads=512,
                  d_ff=65536, context=1024).validate()
