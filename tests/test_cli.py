"""The command line as a user runs it: real processes, exit codes, one-line errors."""

import json
import subprocess
import sys

import pytest

from conftest import SAMPLE_DATA


def pnlm_cli(*args):
    return subprocess.run([sys.executable, "-m", "pnlm.cli", *map(str, args)], capture_output=True, text=True)


def test_tokenizer_init_info_generate(tmp_path):
    result = pnlm_cli("data", "tokenizer", *SAMPLE_DATA, "--vocab-size", 384, "--out", tmp_path / "tok", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["vocab_size"] == 384
    result = pnlm_cli("init", "--model", "tiny", "--tokenizer", tmp_path / "tok", "--out", tmp_path / "ckpt", "--seed", 3)
    assert result.returncode == 0, result.stderr
    info = json.loads(pnlm_cli("info", tmp_path / "ckpt", "--json").stdout)
    assert info["spec"]["vocab_size"] == 384 and info["method"] == "slm"
    assert info["params_inference"] == info["params_pretrain"] > 0
    outputs = {}
    for backend in ("torch", "mlx"):
        result = pnlm_cli("generate", tmp_path / "ckpt", "--prompt", "It is a truth", "--max-tokens", 12,
                          "--backend", backend, "--json")
        assert result.returncode == 0, result.stderr
        outputs[backend] = json.loads(result.stdout)
        assert outputs[backend]["generated_tokens"] == len(outputs[backend]["tokens"]) <= 12
    assert outputs["torch"]["tokens"] == outputs["mlx"]["tokens"]
    streamed = pnlm_cli("generate", tmp_path / "ckpt", "--prompt", "It is a truth", "--max-tokens", 12, "--backend", "torch")
    assert streamed.returncode == 0 and streamed.stdout.rstrip("\n") == outputs["torch"]["text"]


@pytest.mark.parametrize("args, fragment", [
    (["info", "/nonexistent/ckpt"], "no such checkpoint folder"),
    (["info", "--model", "nope"], "unknown model 'nope'"),
    (["init", "--model", "tiny", "--tokenizer", "/nonexistent", "--out", "/tmp/x"], "no such tokenizer file"),
    (["data", "tokenizer", "/nonexistent.jsonl", "--vocab-size", "100", "--out", "/tmp/x"], "no such file"),
])
def test_bad_input_is_one_line_and_exit_2(args, fragment):
    result = pnlm_cli(*args)
    assert result.returncode == 2
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_generate_options(tiny_checkpoint):
    result = pnlm_cli("generate", tiny_checkpoint, "--prompt", "a", "--backend", "torch", "--top-p", "0")
    assert result.returncode == 2 and "top_p" in result.stderr
    result = pnlm_cli("generate", tiny_checkpoint, "--prompt", "a", "--backend", "cuda")
    assert result.returncode == 2 and "cuda" in result.stderr


def test_help_for_every_command():
    for args in ([], ["data"], ["data", "tokenizer"], ["init"], ["info"], ["generate"]):
        result = pnlm_cli(*args, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout


@pytest.mark.parametrize("content, fragment", [
    (b'{"text": "ok"}\n{"text": "a"\n', "bad.jsonl:2: not valid JSON"),
    (b'{"text": "ok"}\n{"body": "a"}\n', 'bad.jsonl:2: expected an object with a string field "text"'),
    (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "byte offset 28"),
    (b"", "no documents"),
    (b'{"text": ""}\n{"text": "  "}\n', "no documents"),
])
def test_prepare_bad_input_is_one_line(tmp_path, tokenizer, content, fragment):
    (tmp_path / "bad.jsonl").write_bytes(content)
    result = pnlm_cli("data", "prepare", tmp_path / "bad.jsonl", "--tokenizer", tokenizer.path.parent,
                      "--context", 32, "--out", tmp_path / "store")
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "store").exists()


def test_prepare_skip_bad_counts(tmp_path, tokenizer):
    (tmp_path / "mixed.jsonl").write_text('{"text": "good one"}\n{oops\n{"text": ""}\n{"text": "good two"}\n')
    result = pnlm_cli("data", "prepare", tmp_path / "mixed.jsonl", "--tokenizer", tokenizer.path.parent,
                      "--context", 32, "--out", tmp_path / "store", "--skip-bad", "--json",
                      "--valid-fraction", 0, "--test-fraction", 0)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bad_records_skipped"] == 1 and report["empty_documents_skipped"] == 1
    assert report["splits"]["train"]["documents"] == 2


def test_every_command_takes_json():
    import typer.main

    from pnlm.cli.app import app

    def commands(command, path):
        subcommands = getattr(command, "commands", None)
        if not subcommands:
            yield " ".join(path), command
            return
        for name, sub in subcommands.items():
            yield from commands(sub, [*path, name])

    found = dict(commands(typer.main.get_command(app), []))
    assert len(found) >= 19 and "experiment report" in found and "import" in found
    without = [name for name, command in found.items()
               if "--json" not in {opt for param in command.params for opt in getattr(param, "opts", [])}]
    assert not without, f"commands without --json: {without}"


def test_export_and_import_print_json(tmp_path, tiny_checkpoint):
    exported = pnlm_cli("export", tiny_checkpoint, "--out", tmp_path / "hf", "--json")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["format"] == "hf" and json.loads(exported.stdout)["bytes"] > 0
    imported = pnlm_cli("import", tmp_path / "hf", "--out", tmp_path / "again", "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout) == {"out": str(tmp_path / "again"), "source": str(tmp_path / "hf"),
                                           "kind": "checkpoint"}
