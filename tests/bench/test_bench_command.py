"""gilfree.bench on its own: choosing workloads, and one quick run reported as JSON."""

from __future__ import annotations

import json

import pytest

from gilfree._usage import UsageError
from gilfree.bench import SUITE, command, runner


def test_only_selects_workloads_in_suite_order():
    names = [w.name for w in SUITE]
    picked = runner.select(f"{names[-1]}, {names[0]}")
    assert [w.name for w in picked] == [names[0], names[-1]]
    assert runner.select(None) == SUITE


@pytest.mark.parametrize("only", ["nope", "io,nope", " , "])
def test_an_unknown_workload_is_a_usage_error_naming_the_choices(only):
    with pytest.raises(UsageError) as err:
        runner.select(only)
    message = str(err.value)
    assert repr(only) in message or "nope" in message
    assert all(w.name in message for w in SUITE)


@pytest.mark.timeout(90)
def test_a_quick_run_reports_every_backend_as_json(capsys):
    status = command.main(quick=True, plot=None, as_json=True, repeat=1, only="io")
    data = json.loads(capsys.readouterr().out)
    assert status == 0
    [io] = data["workloads"]
    assert io["name"] == "io"
    assert set(io["backends"]) == {"serial", "thread", "process", "auto"}
    for name, timing in io["backends"].items():
        assert timing["error"] is None, (name, timing["error"])
        assert timing["seconds"] > 0
    # Sleeping tasks overlap on threads whatever the machine's load.
    assert io["backends"]["thread"]["speedup"] > 2
