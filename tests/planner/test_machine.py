"""What processes cost on this machine (``planner._machine``): the median of
several timings is kept, so one that a busy machine delayed never becomes the
cost written to ``machine.json``."""

from __future__ import annotations

import functools
import multiprocessing
import os
import time

import pytest

from gilfree.planner import _machine

# What the busy machine did once: a worker that answered 169 ms late where the
# others took 5-10 ms. Here far longer, so that no real delay comes near it.
STALL_S = 1.0


def _stalling_echo(conn, claim: str) -> None:
    """``_machine._echo``, except that the first worker to start stalls
    ``STALL_S`` before it answers, and again on one ping."""
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        first = True
    except FileExistsError:
        first = False
    if first:
        time.sleep(STALL_S)
    conn.send_bytes(b"r")
    pings = 0
    while True:
        msg = conn.recv_bytes()
        if msg == b"q":
            break
        pings += 1
        if first and pings == 30:
            time.sleep(STALL_S)
        conn.send_bytes(b"k")
    conn.close()


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(),
    reason="the stalling worker is handed over by fork",
)
@pytest.mark.timeout(60)
def test_a_stalled_start_and_a_stalled_ping_do_not_become_the_costs(tmp_path, monkeypatch):
    claim = tmp_path / "first"
    monkeypatch.setattr(_machine, "_echo", functools.partial(_stalling_echo, claim=str(claim)))
    costs = _machine.measure()
    assert claim.exists(), "no worker stalled: the test measured nothing"
    assert costs.measured
    # One timing of each kind took STALL_S longer. A single start would have
    # read ready_s >= STALL_S, and the mean of all 200 pings >= STALL_S / 200.
    assert 0 < costs.ready_s < STALL_S / 2
    assert 0 < costs.roundtrip_s < STALL_S / 400
    assert 0 < costs.spawn_s < STALL_S / 2


def test_the_median_of_each_timing_is_kept():
    costs = _machine.summarize(
        2,
        "fork",
        starts=[(0.001, 0.005), (0.002, 0.169), (0.001, 0.006), (0.050, 0.004), (0.001, 0.007)],
        rounds=[20e-6, 21e-6, 19e-6, 5e-3, 22e-6, 20e-6, 18e-6, 23e-6],
        sends=[0.004, 0.5, 0.005],
    )
    assert (costs.cpus, costs.start_method, costs.measured) == (2, "fork", True)
    assert costs.spawn_s == 0.001
    assert costs.ready_s == 0.006
    assert costs.roundtrip_s == pytest.approx(20.5e-6)
    assert costs.byte_s == pytest.approx((0.005 - 20.5e-6) / _machine._PAYLOAD)


def test_two_delayed_starts_of_five_are_outvoted():
    starts = [(0.2, 0.3), (0.001, 0.005), (0.2, 0.3), (0.001, 0.006), (0.001, 0.004)]
    costs = _machine.summarize(1, "fork", starts=starts, rounds=[1e-5], sends=[0.01])
    assert (costs.spawn_s, costs.ready_s) == (0.001, 0.006)
    assert len(starts) == _machine._STARTS
