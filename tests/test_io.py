"""Record files: atomic rewrites, crash-safe appends and validated reads with clear errors."""

from __future__ import annotations

import json

import pytest

from chareval.errors import InputError
from chareval.io import (
    append_jsonl,
    latest_by_id,
    read_records_json,
    read_records_jsonl,
    write_records_json,
)
from chareval.schemas import Context, ErrorRecord


def error(item: str, text: str = "boom") -> ErrorRecord:
    return ErrorRecord(stage="s", item_id=item, error=text)


def test_append_then_read_back(tmp_path):
    path = tmp_path / "e.jsonl"
    append_jsonl(path, error("a"))
    append_jsonl(path, error("b"))
    assert [r.item_id for r in read_records_jsonl(path, ErrorRecord)] == ["a", "b"]


def test_torn_last_line_is_cut_and_appending_resumes(tmp_path):
    path = tmp_path / "e.jsonl"
    append_jsonl(path, error("a"))
    with path.open("a") as f:
        f.write('{"schema_version": 1, "stage": "s", "item_')  # a crash mid-write
    assert [r.item_id for r in read_records_jsonl(path, ErrorRecord, tolerate_torn_tail=True)] == ["a"]
    append_jsonl(path, error("b"))
    assert [r.item_id for r in read_records_jsonl(path, ErrorRecord)] == ["a", "b"]


def test_a_complete_last_line_that_fails_validation_is_an_error_not_a_torn_tail(tmp_path):
    """A newer schema_version or a hand edit: the line ends with its newline, so no crash cut it."""
    path = tmp_path / "e.jsonl"
    append_jsonl(path, error("a"))
    newer = error("b").model_dump() | {"schema_version": 2}
    with path.open("a") as f:
        f.write(json.dumps(newer) + "\n")
    before = path.read_bytes()
    with pytest.raises(InputError, match=r"e\.jsonl:2 is not a valid ErrorRecord"):
        read_records_jsonl(path, ErrorRecord, tolerate_torn_tail=True)
    assert path.read_bytes() == before  # nothing deleted


def test_dropping_a_torn_tail_is_logged(tmp_path, caplog):
    path = tmp_path / "e.jsonl"
    append_jsonl(path, error("a"))
    with path.open("a") as f:
        f.write('{"schema_version": 1, "st')
    read_records_jsonl(path, ErrorRecord, tolerate_torn_tail=True)
    assert any("e.jsonl:2 was cut off mid-write" in r.getMessage() for r in caplog.records)


def test_a_bad_line_in_the_middle_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "e.jsonl"
    append_jsonl(path, error("a"))
    with path.open("a") as f:
        f.write('{"not": "a record"}\n')
    append_jsonl(path, error("c"))
    with pytest.raises(InputError, match=r"e\.jsonl:2 is not a valid ErrorRecord"):
        read_records_jsonl(path, ErrorRecord, tolerate_torn_tail=True)


def test_read_json_errors_name_the_file_and_problem(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(InputError, match="does not exist"):
        read_records_json(missing, Context)
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(InputError, match="not valid JSON: line 1"):
        read_records_json(broken, Context)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"id": "x"}]))
    with pytest.raises(InputError, match=r"wrong\.json is not a list of Context records: item 0\.title"):
        read_records_json(wrong, Context)


def test_atomic_rewrite_leaves_no_temp_files(tmp_path):
    path = tmp_path / "c.json"
    write_records_json(path, [error("a")])
    write_records_json(path, [error("a"), error("b")])
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]
    assert len(json.loads(path.read_text())) == 2


def test_latest_by_id_keeps_the_last_record_in_first_seen_order():
    class R:
        def __init__(self, id, v):
            self.id, self.v = id, v

    rows = latest_by_id([R("a", 1), R("b", 1), R("a", 2)])
    assert [(r.id, r.v) for r in rows] == [("a", 2), ("b", 1)]
