"""Every data format loads into the same records; every validation error names file, row and field."""

import csv
import json

import pytest

from prefopt.data import DataError, load_records, split_by_prompt
from prefopt.data.records import parse_row

PAIR = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}
CHAT_PAIR = {
    "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}],
}
RANKED = {"prompt": "Name a colour", "completions": ["red", "blue", "car"], "scores": [2, 2, 0]}
RANKS = {"prompt": "Name a colour", "completions": ["red", "car", "blue"], "ranks": [1, 3, 2]}
ULTRAFEEDBACK = {
    "prompt": "Say hi",
    "completions": [{"text": "hi", "score": 9}, {"response": "bye", "score": 2}],
}


def write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_formats_become_one_record_type(tmp_path):
    records = load_records(
        write(tmp_path, "d.jsonl", [PAIR, CHAT_PAIR, RANKED, RANKS, ULTRAFEEDBACK])
    ).records
    pair, chat, ranked, ranks, uf = records
    assert (pair.prompt, pair.completions, pair.scores) == ("What is 2+2?", ("4", "5"), (1.0, 0.0))
    assert chat.prompt == [{"role": "user", "content": "Hi"}]  # implicit prompt: the shared prefix
    assert chat.completions == (
        [{"role": "assistant", "content": "Hello!"}],
        [{"role": "assistant", "content": "Go away."}],
    )
    assert ranked.scores == (2.0, 2.0, 0.0)
    assert ranks.scores == (-1.0, -3.0, -2.0)  # rank 1 is best
    assert uf.completions == ("hi", "bye") and uf.scores == (9.0, 2.0)
    assert pair.source.endswith("d.jsonl, row 1") and uf.source.endswith("row 5")


def test_parquet_csv_json_and_datasets_folder(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [PAIR, RANKED]
    pq.write_table(pa.Table.from_pylist([PAIR, {**PAIR, "prompt": "Why?"}]), tmp_path / "d.parquet")
    assert len(load_records(tmp_path / "d.parquet").records) == 2
    with (tmp_path / "d.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "completions", "scores"])
        writer.writeheader()
        writer.writerow({"prompt": "p", "completions": json.dumps(["a", "b"]), "scores": "[1, 0]"})
    with (tmp_path / "pairs.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "chosen", "rejected"])
        writer.writeheader()
        writer.writerow(PAIR)
    assert load_records(tmp_path / "d.csv").records[0].completions == ("a", "b")
    assert load_records(tmp_path / "pairs.csv").records[0].completions == ("4", "5")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    assert len(load_records(tmp_path / "d.json").records) == 2
    datasets.Dataset.from_list([PAIR, {**PAIR, "prompt": "Why?"}]).save_to_disk(
        str(tmp_path / "folder")
    )
    assert len(load_records(tmp_path / "folder").records) == 2


BAD_ROWS = [
    ({"prompt": "p", "chosen": "a"}, 'missing field "rejected"'),
    ({"chosen": "a", "rejected": "b"}, 'missing field "prompt"'),
    ({"prompt": "p", "chosen": "", "rejected": "b"}, '"chosen" is empty'),
    ({"prompt": "  ", "chosen": "a", "rejected": "b"}, '"prompt" is empty'),
    (
        {"prompt": "p", "chosen": 3, "rejected": "b"},
        '"chosen" must be a string or a list of chat messages, got int',
    ),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, '"rejected" is identical to "chosen"'),
    ({"prompt": "p", "completions": ["a"], "scores": [1]}, "needs at least two completions, got 1"),
    ({"prompt": "p", "completions": ["a", "b"], "scores": [1, 1]}, "all scores are tied (1.0)"),
    (
        {"prompt": "p", "completions": ["a", "b", "c"], "scores": [1, 0]},
        '"completions" has 3 items but "scores" has 2',
    ),
    ({"prompt": "p", "completions": ["a", "b"]}, 'missing field "scores"'),
    (
        {"prompt": "p", "completions": ["a", "b"], "scores": [1, "x"]},
        '"scores"[1] must be a finite number',
    ),
    ({"prompt": "p", "completions": "ab", "scores": [1, 0]}, '"completions" must be a list'),
    ({"prompt": "p"}, "missing completions"),
    (
        {"prompt": "p", "chosen": [{"role": "assistant"}], "rejected": "b"},
        '"chosen"[0]["content"] must be a string',
    ),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS, ids=[m for _, m in BAD_ROWS])
def test_validation_names_file_row_and_field(tmp_path, row, message):
    path = write(tmp_path, "train.jsonl", [PAIR, PAIR, row, PAIR])
    with pytest.raises(DataError) as caught:
        load_records(path)
    assert str(caught.value).startswith(f"{path}, row 3: {message}")


def test_invalid_json_and_non_utf8(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(PAIR).encode() + b"\n{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl, row 2: invalid JSON"):
        load_records(path)
    path.write_bytes(json.dumps(PAIR).encode() + b"\n" + b'{"prompt": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, row 2: not valid UTF-8"):
        load_records(path)
    csv_path = tmp_path / "bad.csv"
    csv_path.write_bytes(b"prompt,chosen,rejected\np,a,b\np,\xff,b\n")
    with pytest.raises(DataError, match=r"bad.csv: not valid UTF-8 at line 3"):
        load_records(csv_path)


@pytest.mark.parametrize("name", ["sheet.jsonl", "sheet.csv"])
def test_a_byte_order_mark_as_spreadsheet_tools_write_is_read(tmp_path, name):
    """Excel and others start a UTF-8 file with a byte-order mark: it is not data (issue 47)."""
    path = tmp_path / name
    row = ",".join(PAIR[k] for k in ("prompt", "chosen", "rejected"))
    body = (
        json.dumps(PAIR) + "\n" if name.endswith(".jsonl") else f"prompt,chosen,rejected\n{row}\n"
    )
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    (record,) = load_records(path).records
    assert record.prompt == PAIR["prompt"] and record.completions == (
        PAIR["chosen"],
        PAIR["rejected"],
    )
    path.write_bytes(body.encode() + b"\xef\xbb\xbf" + body.encode().split(b"\n", 1)[-1])
    if name.endswith(".jsonl"):  # a mark anywhere but the start is still refused, naming the row
        with pytest.raises(DataError, match=r"row 2: invalid JSON"):
            load_records(path)


def test_skip_invalid_counts_by_reason(tmp_path):
    rows = [
        PAIR,
        {"prompt": "p", "chosen": "", "rejected": "b"},
        {"prompt": "q", "chosen": "", "rejected": "c"},
        {"prompt": "p", "completions": ["a", "b"], "scores": [1, 1]},
        RANKED,
    ]
    path = write(tmp_path, "d.jsonl", rows)
    with path.open("a") as handle:
        handle.write("{oops\n")
    loaded = load_records(path, skip_invalid=True)
    assert len(loaded.records) == 2
    assert loaded.skipped == {"empty text": 2, "all scores tied": 1, "invalid JSON": 1}
    assert (
        "skipped 4 invalid rows (2 empty text, 1 all scores tied, 1 invalid JSON)"
        in loaded.summary()
    )


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_records(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="unknown file type '.txt'"):
        load_records(tmp_path / "d.txt")


def test_split_by_prompt_never_shares_a_prompt():
    from prefopt.data import PreferenceRecord

    records = [
        PreferenceRecord(prompt=f"p{i % 20}", completions=(f"a{i}", f"b{i}"), scores=(1.0, 0.0))
        for i in range(100)
    ]
    train, held_out = split_by_prompt(records, 0.2, seed=3)
    assert len(train) + len(held_out) == 100
    assert {r.prompt for r in train}.isdisjoint({r.prompt for r in held_out})
    assert len({r.prompt for r in held_out}) == 4
    assert split_by_prompt(records, 0.2, seed=3) == (train, held_out)


def test_an_empty_answer_to_a_chat_prompt_is_kept_and_tokenized(tokenizer):
    # a generated answer can be empty (the model ended its turn at once): a chat prompt gives it
    # the template's end-of-turn tokens, so it is scored and trained on, not refused
    from prefopt.data import TokenizeSettings
    from prefopt.data.tokenize import tokenize_record

    record = parse_row(
        {
            "prompt": [{"role": "user", "content": "hi"}],
            "completions": ["", "hello"],
            "scores": [0, 1],
        }
    )
    assert record.completions == ("", "hello")
    example = tokenize_record(record, tokenizer, TokenizeSettings())
    assert all(len(ids) > 0 for ids in example.completion_ids)
    with pytest.raises(DataError, match='"completions"\\[0\\] is empty'):
        parse_row({"prompt": "hi", "completions": ["", "hello"], "scores": [0, 1]})


def test_text_utf8_cannot_hold_is_refused_naming_file_row_and_field(tmp_path):
    # JSON's "\ud800" escape gives Python a lone surrogate: refused where it is read, not later
    path = tmp_path / "items.jsonl"
    path.write_text(
        '{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
        '{"prompt": [{"role": "user", "content": "ok \\ud800"}], "completions": ["x", "y"]}\n'
    )
    with pytest.raises(
        DataError,
        match=r'items.jsonl, row 2: "prompt"\[0\]\["content"\] is not valid text: '
        r"a lone surrogate '\\ud800' at character 3",
    ):
        load_records(path, require_scores=False)
    loaded = load_records(path, require_scores=False, skip_invalid=True)
    assert len(loaded.records) == 1 and loaded.skipped == {"invalid text": 1}


def test_read_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    """A sampled answer held U+2029: json.dumps(ensure_ascii=False) writes it as is, and a file
    split by str.splitlines broke that row in two."""
    from prefopt.data import read_jsonl

    rows = [{"prompt": "p", "completions": ["one\u2029two", "a\u2028b\x85c\x0bd"]}, {"prompt": "q"}]
    path = tmp_path / "rows.jsonl"
    path.write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8"
    )
    assert read_jsonl(path) == rows
