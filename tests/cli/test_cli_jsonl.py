"""The pieces of ``gilfree run`` that need no subprocess: records, resume, MODULE:FUNC."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from gilfree._cli import UsageError
from gilfree._cli._jsonl import (
    IndexSet,
    compact,
    cut_torn_tail,
    error_record,
    iter_lines,
    parse_item,
    result_record,
    scan,
)
from gilfree._cli._target import load_target
from gilfree.errors import RemoteTraceback


def test_index_set_grows_and_counts_each_index_once():
    s = IndexSet()
    assert 0 not in s
    assert s.add(0) and s.add(7) and s.add(8) and s.add(1_000_003)
    assert not s.add(7)
    assert len(s) == 4
    assert all(i in s for i in (0, 7, 8, 1_000_003))
    assert all(i not in s for i in (1, 6, 9, 1_000_002, 10**9))


@pytest.mark.parametrize(
    ("content", "kept", "done", "failed"),
    [
        (b"", b"", set(), 0),
        (b'{"index": 3, "res', b"", set(), 0),  # one torn line and nothing else
        (b'{"index": 0, "result": 1}\n', b'{"index": 0, "result": 1}\n', {0}, 0),
        (
            b'{"index": 0, "result": 1}\n{"index": 2, "error": {"type": "E"}}\n{"index": 1',
            b'{"index": 0, "result": 1}\n{"index": 2, "error": {"type": "E"}}\n',
            {0, 2},
            1,
        ),
        # A whole record that lost only its newline is still cut: it may not be whole.
        (
            b'{"index": 0, "result": 1}\n{"index": 1, "result": 2}',
            b'{"index": 0, "result": 1}\n',
            {0},
            0,
        ),
    ],
)
def test_scan_finds_the_torn_last_line_and_cut_removes_it(tmp_path, content, kept, done, failed):
    out = tmp_path / "out.jsonl"
    out.write_bytes(content)
    state = scan(str(out))
    assert out.read_bytes() == content  # scanning changes nothing
    assert state.torn == len(content) - len(kept)
    assert {i for i in range(10) if i in state.done} == done
    assert state.failed == failed
    fd = os.open(out, os.O_WRONLY | os.O_APPEND)
    try:
        cut_torn_tail(fd, state)
    finally:
        os.close(fd)
    assert out.read_bytes() == kept


def test_scan_of_a_missing_file_is_an_empty_start(tmp_path):
    state = scan(str(tmp_path / "absent.jsonl"))
    assert len(state.done) == 0 and state.torn == 0


@pytest.mark.parametrize(
    "line", [b"not json\n", b"[1, 2]\n", b'{"index": -1, "result": 0}\n', b'{"index": 1}\n']
)
def test_resume_refuses_lines_that_are_not_records(tmp_path, line):
    out = tmp_path / "out.jsonl"
    content = b'{"index": 0, "result": 1}\n' + line + b'{"index": 2, "res'
    out.write_bytes(content)
    with pytest.raises(UsageError, match="line 2"):
        scan(str(out))
    assert out.read_bytes() == content  # not even the torn line is cut


def _err(i: int, kind: str = "E") -> str:
    return json.dumps({"index": i, "error": {"type": kind, "message": "m", "traceback": ""}})


def _res(i: int) -> str:
    return json.dumps({"index": i, "result": i})


def test_scan_counts_an_index_once_and_prefers_a_result_over_errors(tmp_path):
    out = tmp_path / "out.jsonl"
    # 1 failed, was retried and failed again (F), 2 failed then succeeded, 3 only failed.
    lines = [_res(0), _err(1), _err(2), _err(3, "G"), _err(1, "F"), _res(2)]
    out.write_text("\n".join(lines) + "\n")
    state = scan(str(out))
    assert len(state.done) == 4 and state.duplicates == 2
    assert {i for i in range(5) if i in state.good} == {0, 2}
    assert state.failed == 2
    assert state.error_types == {"F": 1, "G": 1}


def test_compact_keeps_one_record_per_index_in_place_of_the_first(tmp_path):
    out = tmp_path / "out.jsonl"
    lines = [_res(0), _err(1), _err(2), _res(3), _err(1, "F"), _res(2), _err(2, "late")]
    out.write_text("\n".join(lines) + "\n" + '{"index": 9, "re')
    out.chmod(0o640)
    final = compact(str(out))
    assert out.read_text().splitlines() == [_res(0), _err(1, "F"), _res(2), _res(3)]
    assert len(final.done) == 4 and final.duplicates == 0 and final.error_types == {"F": 1}
    assert out.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary file left
    before = out.read_bytes()
    compact(str(out))  # nothing to do: the file is not rewritten
    assert out.read_bytes() == before


def test_iter_lines_numbers_lines_and_skips_blank_ones(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"1\n\n  \n2\r\n3")
    with open(src, "rb") as f:
        assert [(i, parse_item(raw)) for i, raw in iter_lines(f)] == [
            (0, (True, 1)),
            (3, (True, 2)),
            (4, (True, 3)),
        ]


@pytest.mark.parametrize("raw", [b"{", b"\xff\n", b"[" * 100_000])
def test_parse_item_explains_bad_lines(raw):
    ok, why = parse_item(raw)
    assert not ok and isinstance(why, str) and why


@pytest.mark.parametrize(
    "raw, where",
    [
        # Found at the newline, json says "line 2 column 1": the column on this line.
        (b'{"x": 3\n', "Expecting ',' delimiter at column 8"),
        (b'{"x": 3\r\n', "Expecting ',' delimiter at column 8"),
        (b"{x: 3}\n", "Expecting property name enclosed in double quotes at column 2"),
        (b'"a\tb"\n', "Invalid control character at column 3"),  # one "at"
    ],
)
def test_a_bad_line_names_the_column_on_that_line(raw, where):
    ok, why = parse_item(raw)
    assert not ok and why.startswith(f"not valid JSON ({where}): "), why


def test_result_records_accept_numpy_and_reject_other_objects():
    np = pytest.importorskip("numpy")
    ok, line = result_record(4, {"a": np.arange(3), "b": np.float64(0.5), "s": "é"})
    assert ok and json.loads(line) == {"index": 4, "result": {"a": [0, 1, 2], "b": 0.5, "s": "é"}}
    ok, line = result_record(5, object())
    record = json.loads(line)
    assert not ok and record["index"] == 5
    assert record["error"]["type"] == "SerializationError"
    assert "object" in record["error"]["message"]


def test_error_records_carry_the_remote_traceback_when_there_is_one():
    remote = ValueError("bad")
    remote.__cause__ = RemoteTraceback('File "w.py", line 3, in f\nValueError: bad\n')
    record = json.loads(error_record(2, remote))
    assert record == {
        "index": 2,
        "error": {
            "type": "ValueError",
            "message": "bad",
            "traceback": 'File "w.py", line 3, in f\nValueError: bad\n',
        },
    }
    try:
        raise KeyError("k")
    except KeyError as exc:
        local = json.loads(error_record(3, exc))
    assert local["error"]["type"] == "KeyError"
    assert "test_error_records_carry" in local["error"]["traceback"]


@pytest.fixture
def isolated_imports(monkeypatch):
    """Undo what loading a target does to sys.path, PYTHONPATH and sys.modules."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    before = set(sys.modules)
    yield monkeypatch
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_load_target_by_path_and_dotted_attribute(tmp_path: Path, isolated_imports):
    (tmp_path / "cli_target_mod.py").write_text(
        "class Box:\n    @staticmethod\n    def double(x):\n        return 2 * x\n"
    )
    fn = load_target(f"{tmp_path / 'cli_target_mod.py'}:Box.double")
    assert fn(21) == 42
    del sys.modules["cli_target_mod"]
    isolated_imports.chdir(tmp_path)
    assert load_target("cli_target_mod:Box.double")(1) == 2
    assert str(tmp_path) in os.environ["PYTHONPATH"].split(os.pathsep)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("nocolon", "MODULE:FUNC"),
        (":f", "MODULE:FUNC"),
        ("json:", "MODULE:FUNC"),
        ("json:no_such_thing", "no_such_thing"),
        ("json:__doc__", "is a str, not a function"),
        ("sys:maxsize", "is an int, not a function"),
        ("no_such_module_xyz:f", "no_such_module_xyz"),
    ],
)
def test_load_target_errors_are_one_plain_sentence(spec, words):
    with pytest.raises(UsageError, match=words) as info:
        load_target(spec)
    assert "\n" not in str(info.value)


def test_an_error_record_renames_only_gilfree_s_own_task_number():
    import json

    from gilfree.errors import WorkerDied

    ours = WorkerDied("worker process 9 died while running task 3 (input: 5).", index=3)
    assert "running task 5 (input" in json.loads(error_record(5, ours, task=3))["error"]["message"]
    theirs = ValueError("task 3 is not ready")  # the user's own words
    assert json.loads(error_record(5, theirs, task=3))["error"]["message"] == "task 3 is not ready"


@pytest.mark.parametrize("value", [float("inf"), -float("inf"), float("nan"), [1.0, float("nan")]])
def test_a_result_with_infinity_or_nan_is_an_error_record_not_invalid_json(value):
    # json.dumps writes them as Infinity and NaN by default, which strict JSON
    # readers (jq) reject: the output file would have had a line nobody can read.
    ok, line = result_record(2, value)
    record = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} written"))
    assert not ok and record["error"]["type"] == "SerializationError"
    assert "cannot be written as JSON" in record["error"]["message"]
