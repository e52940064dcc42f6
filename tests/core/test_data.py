"""Data loading: every format, encodings, and errors that name file, line and expectation."""
import codecs
import json

import pytest

from bertcore.data import DataError, Examples, load_examples, read_text


def test_jsonl_csv_tsv(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"text": "good", "label": "pos"}\n\n{"text": "bad", "label": "neg"}\n', encoding="utf-8")
    assert load_examples(f) == [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    c = tmp_path / "a.csv"
    c.write_text('text,label\n"good, really",pos\nbad,neg\n', encoding="utf-8")
    assert load_examples(c)[0] == {"text": "good, really", "label": "pos"}
    t = tmp_path / "a.tsv"
    t.write_text("text\ttext_pair\tlabel\na\tb\t1\n", encoding="utf-8")
    assert load_examples(t) == [{"text": "a", "text_pair": "b", "label": "1"}]


def test_conll_and_squad(tmp_path):
    f = tmp_path / "ner.conll"
    f.write_text("-DOCSTART- O\n\nJohn\tB-PER\nlives\tO\n\nParis B-LOC\n", encoding="utf-8")
    assert load_examples(f) == [{"tokens": ["John", "lives"], "tags": ["B-PER", "O"]},
                                {"tokens": ["Paris"], "tags": ["B-LOC"]}]
    squad = {"data": [{"paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "q1", "question": "Where?", "answers": [{"text": "France", "answer_start": 12}]},
        {"id": "q2", "question": "Who?", "answers": [], "is_impossible": True}]}]}]}
    s = tmp_path / "squad.json"
    s.write_text(json.dumps(squad), encoding="utf-8")
    ex = load_examples(s)
    assert ex[0]["answers"] == {"text": ["France"], "answer_start": [12]}
    assert ex[1]["answers"] == {"text": [], "answer_start": []} and ex[1]["context"] == "Paris is in France."


def test_other_encodings_are_named_never_guessed(tmp_path):
    f = tmp_path / "gbk.jsonl"
    f.write_bytes('{"text": "很好", "label": "pos"}\n'.encode("gbk"))
    with pytest.raises(DataError, match=r"gbk.jsonl:1: byte 0xba at column 11 is not UTF-8.*encoding"):
        load_examples(f)
    assert load_examples(f, encoding="gb18030")[0]["text"] == "很好"
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ntrès bien,pos\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv:2: byte 0xe8 at column 3 is not UTF-8"):
        load_examples(latin)  # GB18030 would read it as 'tr鑣 bien'
    assert load_examples(latin, encoding="latin-1")[0]["text"] == "très bien"
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes('{"text": "é", "label": "pos"}\n'.encode("utf-8-sig"))
    assert read_text(bom).startswith('{"text"') and load_examples(bom)[0]["text"] == "é"
    # Windows' "Unicode" text is UTF-16 with a byte order mark: read by it, where it was
    # refused with a hint of latin-1, which would have read it as "ÿþt\x00e\x00..."
    for codec in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
        unicode = tmp_path / f"{codec}.csv"
        bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE,
               "utf-32-le": codecs.BOM_UTF32_LE, "utf-32-be": codecs.BOM_UTF32_BE}[codec]
        unicode.write_bytes(bom + "text,label\r\ntrès bien,pos\r\n很好,pos\r\n".encode(codec))
        assert [e["text"] for e in load_examples(unicode)] == ["très bien", "很好"], codec


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", label}\n', r"bad.jsonl:2: invalid JSON.*one JSON object per line"),
    ("list.jsonl", '[1, 2]\n', r"list.jsonl:1: got a JSON list; expected an object"),
    ("bad.csv", "text,label\na,b,c\n", r"bad.csv:2: 3 fields, expected 2"),
    ("bad.conll", "John B-PER\nlives\n", r"bad.conll:2: 'lives' has one field; expected token<TAB>tag"),
    ("tags.conll", "John PERSON\n", r"tags.conll:1: tag 'PERSON' is not BIO"),
    ("bad.json", '{"data": [1,', r"bad.json:1: invalid JSON"),
    ("x.parquet", "", r"unknown data format .parquet"),
    ("empty.jsonl", "\n", r"empty.jsonl: no examples"),
])
def test_bad_files_name_file_line_and_expectation(tmp_path, name, content, message):
    f = tmp_path / name
    f.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_examples(f)


def test_undecodable_file(tmp_path):
    f = tmp_path / "bin.jsonl"
    f.write_bytes(b'{"text": "a"}\n' + bytes([0xff, 0xfe, 0xfa, 0x80, 0x81]) * 3)
    with pytest.raises(DataError, match=r"bin.jsonl:2: byte 0xff at column 1 is not UTF-8"):
        load_examples(f)


def test_missing_files_and_indexables(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl")

    class Dataset:  # what datasets.Dataset looks like to us: len + getitem of dicts
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"text": f"t{i}", "label": i}

    ex = load_examples(Dataset())
    assert isinstance(ex, Examples) and len(ex) == 2 and ex[1] == {"text": "t1", "label": 1}
    assert load_examples(iter([{"text": "x"}])) == [{"text": "x"}]

