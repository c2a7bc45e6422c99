"""The examples run, on the public API alone."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_specialize_example_goes_from_corpora_to_a_better_model_without_the_cli(tmp_path, tiny_embedder):
    example = ROOT / "examples" / "specialize.py"
    imported = {alias.name for node in ast.walk(ast.parse(example.read_text()))
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert not any(name.startswith("pnlm.cli") for name in imported), imported
    result = subprocess.run([sys.executable, str(example), str(tmp_path / "out"), "--steps", "20",
                             "--finetune-steps", "10", "--documents", "5",
                             "--embedder", str(tiny_embedder)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    before, after = (float(x) for x in result.stdout.split("Hamlet test perplexity: ")[1].split(" before")[0:1]
                     + [result.stdout.split("fine-tuning, ")[1].split(" after")[0]])
    assert after < before, result.stdout
    assert (tmp_path / "out" / "hamlet-run" / "best").is_dir()
