"""A folder of one's own documents in one command: .txt, .md, .html and .jsonl.gz read by type (HTML reduced to
its main text), counted per type, a bad file named and skipped with --skip-bad or refused without it."""

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from pnlm.data.store import TokenStore

pytest.importorskip("trafilatura")

PNLM = [sys.executable, "-m", "pnlm.cli"]

ARTICLE = ("The grey heron stood motionless in the shallows for most of the morning, its neck drawn back and its "
           "eyes fixed on the water. When a small fish drifted past the reeds, the bird struck so quickly that the "
           "splash came after the catch. Herons hunt alone and wait longer than any other bird on the marsh; the "
           "patience is the whole of the method. By noon it had taken four fish and had not moved more than a few "
           "steps from where it began, and the light on the water had turned from silver to brown.")
NAVIGATION = ("Shop the catalogue", "Subscribe to our newsletter", "Cookie settings")
PAGE = f"""<!DOCTYPE html><html><head><title>Field notes</title><script>var tracking = "{NAVIGATION[0]}";</script></head>
<body><nav><ul><li><a href="/">Home</a></li><li><a href="/about">About us</a></li>
<li><a href="/shop">{NAVIGATION[0]}</a></li></ul></nav>
<header><a href="/subscribe">{NAVIGATION[1]}</a></header>
<main><article><h1>Observing the heron</h1><p>{ARTICLE}</p><p>{ARTICLE.replace("heron", "egret")}</p></article></main>
<footer><p>Copyright 2026 Example. <a href="/privacy">Privacy policy</a>. <a href="/cookies">{NAVIGATION[2]}</a>.</p>
</footer></body></html>"""


def write_documents(folder):
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "marsh.txt").write_text("A plain note about the marsh and its birds, written by hand.\n")
    (folder / "guide.md").write_text("# Birding guide\n\n- bring **binoculars**\n- walk slowly along the dyke\n")
    (folder / "notes" / "heron.html").write_text(PAGE)
    with gzip.open(folder / "records.jsonl.gz", "wt") as f:
        for text in ("The first record of the season.", "A second record, from the northern pool."):
            f.write(json.dumps({"text": text}) + "\n")
    (folder / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n not a document")
    (folder / ".hidden.txt").write_text("an editor's backup, left out")
    (folder / "zz-latin1.txt").write_bytes("Un caf\u00e9 au bord du marais.".encode("latin-1"))  # not UTF-8


def prepare(folder, tokenizer, out, *extra, cwd=None):
    return subprocess.run([*PNLM, "data", "prepare", str(folder), "--tokenizer", str(tokenizer.path.parent),
                           "--context", "64", "--out", str(out), "--valid-fraction", "0", "--test-fraction", "0",
                           "--workers", "1", *extra], capture_output=True, text=True, cwd=cwd)


def test_a_folder_of_documents_prepares_in_one_command(tmp_path, tokenizer):
    write_documents(tmp_path / "docs")
    refused = prepare(tmp_path / "docs", tokenizer, tmp_path / "refused")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert "zz-latin1.txt" in lines[-1] and "invalid UTF-8" in lines[-1] and len(lines) == 1, refused.stderr
    assert not (tmp_path / "refused").exists()

    result = prepare(tmp_path / "docs", tokenizer, tmp_path / "store", "--skip-bad", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["documents_by_type"] == {"html": 1, "jsonl": 2, "md": 1, "txt": 1}
    assert summary["other_files_ignored"] == 1  # the picture; the hidden file is not looked at
    assert len(summary["bad_files_skipped"]) == 1 and "zz-latin1.txt" in summary["bad_files_skipped"][0]

    store = TokenStore(tmp_path / "store")
    tokens, lengths = store.batch("train", np.arange(store.num_windows("train")))
    text = " ".join(tokenizer.decode(row[:n]) for row, n in zip(tokens, lengths))
    assert "grey heron stood motionless" in text and "Birding guide" in text and "northern pool" in text
    for navigation in NAVIGATION:
        assert navigation not in text
    assert "backup" not in text


def test_glob_patterns_and_the_text_summary(tmp_path, tokenizer):
    write_documents(tmp_path / "docs")
    result = prepare(tmp_path / "docs" / "**" / "[gm]*.[mt][dx]*", tokenizer, tmp_path / "store")
    assert result.returncode == 0, result.stderr
    assert "read 2 documents (1 md, 1 txt)" in " ".join(result.stderr.split())
    # A pattern guards what it matches (and with ** its folder) from --out, not the folder it is run in.
    assert prepare("*.md", tokenizer, "here", cwd=tmp_path / "docs").returncode == 0
    onto = prepare(tmp_path / "docs" / "**" / "*.txt", tokenizer, tmp_path / "docs" / "store")
    assert onto.returncode == 2 and "is also an input" in onto.stderr
    nothing = prepare(tmp_path / "docs" / "*.pdf", tokenizer, tmp_path / "none")
    assert nothing.returncode == 2 and "matches no file" in nothing.stderr and len(nothing.stderr.splitlines()) == 1
