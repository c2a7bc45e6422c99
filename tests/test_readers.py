import gzip
import json
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pnlm.data import ReadStats, iter_documents
from pnlm.data import readers
from pnlm.errors import InputError


def write_jsonl(path, records, text_field="text"):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def write_parquet(path, columns, row_group_size=None):
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def read(paths, **options):
    return list(iter_documents(paths if isinstance(paths, list) else [paths], **options))


def raises(match, paths, **options):
    with pytest.raises(InputError, match=match) as info:
        read(paths, **options)
    return str(info.value)


# --- JSONL ---------------------------------------------------------------------------------------

def test_jsonl_plain_and_gz_with_blank_lines(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "one"}, "", "   ", {"text": "two", "id": 2}])
    b = write_jsonl(tmp_path / "b.jsonl.gz", [{"text": "naïve 😀"}])
    assert read([a, b]) == ["one", "two", "naïve 😀"]


def test_jsonl_custom_text_field(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"content": "x", "text": 1}, {"content": "y"}])
    assert read(path, text_field="content") == ["x", "y"]


def test_jsonl_utf8_bom_is_not_part_of_the_first_record(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"text": "a"}\n')
    assert read(path) == ["a"]


@pytest.mark.parametrize("line, message", [
    ('{"text": "a"', r":2: not valid JSON"),
    ('["text"]', r':2: expected an object with a string field "text", got a JSON list'),
    ('{"body": "a"}', r':2: expected an object .*got no field "text" \(fields: body\)'),
    ('{"text": null}', r':2: expected an object .*got "text" of type NoneType'),
])
def test_bad_jsonl_record_names_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, line])
    assert str(path) in raises(message, path)


def test_jsonl_invalid_utf8_names_line_and_byte_offset(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')  # latin-1 é at offset 15 + 13
    message = raises(r":2: invalid UTF-8 byte 0xe9 at byte offset 28$", path)
    assert message.startswith(str(path))


def test_jsonl_gz_invalid_utf8_offset_is_in_the_decompressed_data(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "ok"}\n\n{"text": "\xff"}\n'))
    assert str(path) in raises(r":3: invalid UTF-8 byte 0xff at byte offset 26 of the decompressed data", path)


def test_jsonl_line_bound_allocates_at_most_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "long.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "' + "x" * 10_000_000 + '"}\n')
    tracemalloc.start()
    try:
        message = raises(r":2: line longer than 1000 bytes", path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in message
    assert peak < 1_000_000  # the 10 MB line was never read whole


# --- plain text ----------------------------------------------------------------------------------

def test_txt_file_mode_is_one_document_a_file(tmp_path):
    (tmp_path / "a.txt").write_text("para one\n\npara two\n")
    with gzip.open(tmp_path / "b.txt.gz", "wt") as f:
        f.write("zipped")
    assert read([tmp_path / "a.txt", tmp_path / "b.txt.gz"]) == ["para one\n\npara two\n", "zipped"]


def test_txt_blank_line_mode(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("\n\nfirst line\nsecond line\n\n  \n\t\nsecond doc\n\n\nthird\r\nstill third\r\n\r\nfourth")
    assert read(path, txt_mode="blank-line") == [
        "first line\nsecond line", "second doc", "third\r\nstill third", "fourth",
    ]


def test_txt_blank_line_mode_gz(tmp_path):
    path = tmp_path / "a.txt.gz"
    path.write_bytes(gzip.compress(b"a\n\nb\n"))
    assert read(path, txt_mode="blank-line") == ["a", "b"]


@pytest.mark.parametrize("txt_mode", ["file", "blank-line"])
def test_txt_invalid_utf8_names_line_and_byte_offset(tmp_path, txt_mode):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good\n\nthis is \xc3\x28 bad\n")  # offset 6 + 8
    message = raises(r":3: invalid UTF-8 byte 0xc3 at byte offset 14$", path, txt_mode=txt_mode)
    assert message.startswith(str(path))


def test_unknown_txt_mode_is_a_programming_error(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(ValueError, match="txt_mode"):
        iter_documents([tmp_path / "a.txt"], txt_mode="paragraph")


# --- Parquet -------------------------------------------------------------------------------------

def test_parquet_default_column(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"id": [1, 2], "text": ["alpha", "beta"]})
    assert read(path) == ["alpha", "beta"]


def test_parquet_custom_column_with_nulls(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"body": ["x", None, "y", ""], "text": [1, 2, 3, 4]})
    stats = ReadStats()
    assert read(path, text_field="body", stats=stats) == ["x", "y"]
    assert (stats.documents, stats.empty, stats.bad) == (2, 2, 0)


@pytest.mark.parametrize("column", [
    pa.array(["a", "b"], pa.large_string()),
    pa.array(["a", "b"]).dictionary_encode(),
])
def test_parquet_other_string_types(tmp_path, column):
    path = write_parquet(tmp_path / "a.parquet", {"text": column})
    assert read(path) == ["a", "b"]


def test_parquet_row_groups_stream_in_order(tmp_path):
    texts = [f"document {i} " + "x" * 1000 for i in range(20_000)]
    path = write_parquet(tmp_path / "a.parquet", {"text": texts}, row_group_size=1_000)
    assert pq.ParquetFile(path).num_row_groups == 20
    documents = iter_documents([path])
    assert next(documents) == texts[0]
    arrow_peak = 0
    for i, document in enumerate(documents, start=1):
        assert document == texts[i]
        arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
    assert i == len(texts) - 1
    assert arrow_peak < 8_000_000  # the 20 MB column is never in memory whole


def test_parquet_missing_column_lists_the_columns(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"id": [1], "body": ["x"]})
    message = raises(r'no column "text"; columns: id, body', path)
    assert message.startswith(str(path))


def test_parquet_non_string_column(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"text": [1, 2]})
    assert str(path) in raises(r'column "text" is int64, not a string column', path)


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "a.parquet"
    path.write_text('{"text": "I am JSON"}\n')
    assert str(path) in raises(r"not a readable Parquet file", path)


def test_truncated_parquet_file(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"text": ["a"] * 100})
    path.write_bytes(path.read_bytes()[:-20])
    assert str(path) in raises(r"not a readable Parquet file", path)


# --- errors common to every format ---------------------------------------------------------------

@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", b"", r"no documents$"),
    ("blank.jsonl", b"\n\n  \n", r"no documents$"),
    ("empty.txt", b"", r"no documents \(1 empty\)$"),  # the whole file is one, empty, document
    ("empty.txt.gz", gzip.compress(b"", mtime=0), r"no documents \(1 empty\)$"),
    ("blank.txt", b"\n \n", r"no documents \(1 empty\)$"),
])
def test_a_file_without_documents(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    message = raises(message, path)
    assert message.startswith(str(path))


def test_blank_line_txt_without_paragraphs(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n  \n\n")
    assert str(path) in raises(r"no documents$", path, txt_mode="blank-line")


def test_a_file_of_only_empty_documents_says_so(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": ""}, {"text": " \n"}])
    stats = ReadStats()
    assert str(path) in raises(r"no documents \(2 empty\)", path, stats=stats)
    assert stats.empty == 2


def test_empty_parquet_file(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"text": pa.array([], pa.string())})
    assert str(path) in raises(r"no documents$", path)


def test_no_paths():
    with pytest.raises(InputError, match="no input files"):
        iter_documents([])


def test_unknown_extensions_fail_before_reading(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": "a"}])
    for name in ["x.csv", "x.json", "x.parquet.gz", "x.gz"]:
        (tmp_path / name).write_text("a")
        with pytest.raises(InputError, match="unknown format") as info:
            iter_documents([good, tmp_path / name])
        assert str(tmp_path / name) in str(info.value)


def test_missing_file_fails_before_reading(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": "a"}])
    with pytest.raises(InputError, match="nope.txt: no such file"):
        iter_documents([good, tmp_path / "nope.txt"])


def test_truncated_gz_yields_what_precedes_then_a_clear_error(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    data = gzip.compress("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(10_000)).encode())
    path.write_bytes(data[: len(data) // 2])
    documents = iter_documents([path])
    assert next(documents) == "doc 0"  # streamed: the first record comes out before the damage is reached
    with pytest.raises(InputError, match=r"corrupt or truncated gzip data after line \d+") as info:
        list(documents)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["a.jsonl.gz", "a.txt.gz"])
def test_not_gzip_data(tmp_path, name):
    path = tmp_path / name
    path.write_text('{"text": "plain"}\n')
    assert str(path) in raises(r"corrupt or truncated gzip data", path)


def test_corrupt_gz_body(tmp_path):
    data = bytearray(gzip.compress(b"x" * 100_000 + b"\n"))
    data[20:40] = b"\xff" * 20
    path = tmp_path / "a.txt.gz"
    path.write_bytes(bytes(data))
    assert str(path) in raises(r"corrupt or truncated gzip data", path)


# --- skip_bad and counting -----------------------------------------------------------------------

def mixed_jsonl(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join([
        b'{"text": "good 1"}',
        b'{"text": "broken',
        b'{"text": ""}',
        b'["a list"]',
        b'{"body": "no text"}',
        b'{"text": 7}',
        b'{"text": "caf\xe9"}',
        b'{"text": "   "}',
        b'{"text": "good 2"}',
    ]) + b"\n")
    return path


def test_skip_bad_counts_instead_of_raising(tmp_path):
    path = mixed_jsonl(tmp_path)
    stats = ReadStats()
    assert read(path, skip_bad=True, stats=stats) == ["good 1", "good 2"]
    assert (stats.documents, stats.empty, stats.bad) == (2, 2, 5)
    assert stats.first_bad.startswith(f"{path}:2: not valid JSON")


def test_without_skip_bad_the_first_bad_record_raises(tmp_path):
    path = mixed_jsonl(tmp_path)
    stats = ReadStats()
    documents = iter_documents([path], stats=stats)
    assert next(documents) == "good 1"
    with pytest.raises(InputError, match=":2: not valid JSON"):
        next(documents)
    assert stats.bad == 0


def test_a_file_of_only_bad_records_still_has_no_documents(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("nope\n{}\n")
    stats = ReadStats()
    assert str(path) in raises(r"no documents \(2 bad, skipped\)", path, skip_bad=True, stats=stats)
    assert stats.bad == 2


def test_a_broken_file_stops_the_read_or_with_skip_bad_is_skipped_and_named(tmp_path):
    parquet = write_parquet(tmp_path / "a.parquet", {"body": ["x"]})
    gz = tmp_path / "b.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"text": "a"}\n' * 100)[:-10])
    good = write_jsonl(tmp_path / "c.jsonl", [{"text": "kept"}])
    raises(r'no column "text"', [parquet, gz, good])
    raises(r"corrupt or truncated gzip data", [gz, good])
    stats = ReadStats()
    documents = read([parquet, gz, good], skip_bad=True, stats=stats)
    assert documents[-1] == "kept" and set(documents[:-1]) <= {"a"}  # b's records up to where it breaks
    assert len(stats.bad_files) == 2
    assert "a.parquet" in stats.bad_files[0] and 'no column "text"' in stats.bad_files[0]
    assert "b.jsonl.gz" in stats.bad_files[1] and "corrupt or truncated gzip data" in stats.bad_files[1]


def test_stats_add_up_across_files_and_formats(tmp_path):
    stats = ReadStats()
    paths = [
        write_jsonl(tmp_path / "a.jsonl", [{"text": "a"}, {"text": ""}, "{bad"]),
        write_parquet(tmp_path / "b.parquet", {"text": ["b", None]}),
        tmp_path / "c.txt",
    ]
    paths[2].write_text("c1\n\nc2\n")
    assert read(paths, txt_mode="blank-line", skip_bad=True, stats=stats) == ["a", "b", "c1", "c2"]
    assert (stats.documents, stats.empty, stats.bad) == (4, 2, 1)


# --- inputs that expand to millions of lines ------------------------------------------------------

@pytest.mark.parametrize("name, mode", [("notes.txt.gz", "blank-line"), ("records.jsonl.gz", "file")])
def test_runs_of_blank_lines_keep_every_line_number(tmp_path, name, mode):
    """Blank lines are passed over a run at a time, and what follows them keeps its exact line number."""
    path = tmp_path / name
    first = b'{"text": "first"}' if name.endswith("jsonl.gz") else b"first"
    path.write_bytes(gzip.compress(first + b"\n" + b"\n \t\r\n" * 300_000 + b"\xff second\n"))
    offset = len(first) + 1 + 5 * 300_000
    assert str(path) in raises(rf":600002: invalid UTF-8 byte 0xff at byte offset {offset} of the decompressed data",
                               path, txt_mode=mode)


def test_paragraphs_are_the_lines_between_blank_ones_whatever_their_white_space(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeff\n\n  one\r\nline two\r\n \t\n\u00a0\nthree\n\u3000\n\nfour é".encode())
    assert read(path, txt_mode="blank-line") == ["  one\r\nline two", "three", "four é"]


def test_a_jsonl_file_of_mostly_bad_records_is_refused_whole_under_skip_bad(tmp_path):
    """--skip-bad skips bad records, but a file whose bad records outnumber its documents 10 to 1 (past 1,000 of
    them) is not a file of documents: refused by name at once, not read to its end a record at a time."""
    stats = ReadStats()
    mostly_bad = write_jsonl(tmp_path / "bad.jsonl", ['{"text": "kept"}'] + ["x"] * 2_000)
    some_bad = write_jsonl(tmp_path / "ok.jsonl", ['{"text": "a"}', '{"text": "b"}'] * 100 + ["x"] * 1_500)
    assert read([mostly_bad, some_bad], skip_bad=True, stats=stats) == ["kept"] + ["a", "b"] * 100
    assert stats.bad == 1_001 + 1_500
    assert len(stats.bad_files) == 1 and stats.bad_files[0].startswith(f"{mostly_bad}:1002: 1,001 bad records and 1 good ones up to here")
    assert str(mostly_bad) in raises(r":2: not valid JSON", mostly_bad)  # without --skip-bad, the first bad one
