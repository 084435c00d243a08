"""Frames on pipes: the parent's non-blocking reader and writer against the worker's
blocking calls."""

from __future__ import annotations

import os
import threading

import pytest

from gilfree.pool import _wire

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_small_frames_arrive_whole_and_in_order(pipe):
    r, w = pipe
    os.set_blocking(r, False)
    reader = _wire.FrameReader(r)
    assert reader.read() == []  # nothing yet: no block, no EOF
    for payload in (b"a", b"", b"x" * 1000):
        _wire.send_frame(w, payload)
    assert reader.read() == [b"a", b"", b"x" * 1000]
    os.close(w)
    assert reader.read() == [] and reader.eof


def test_a_frame_split_across_reads_is_reassembled(pipe):
    r, w = pipe
    os.set_blocking(r, False)
    reader = _wire.FrameReader(r)
    data = _wire.frame(b"hello world")
    os.write(w, data[:5])  # half a header
    assert reader.read() == []
    os.write(w, data[5:12])
    assert reader.read() == []
    os.write(w, data[12:])
    assert reader.read() == [b"hello world"]


def test_a_large_frame_goes_through_a_full_pipe(pipe):
    r, w = pipe
    os.set_blocking(w, False)
    writer = _wire.FrameWriter(w)
    payload = os.urandom(3 << 20)  # far more than a pipe holds
    writer.send(payload)
    assert writer.waiting  # the rest waits for the reader, the writer does not block
    got = []
    t = threading.Thread(target=lambda: got.append(_wire.recv_frame(r)))
    t.start()
    while writer.waiting:
        writer.flush()
    t.join(10)
    assert got == [payload]


def test_the_blocking_reader_sees_eof(pipe):
    r, w = pipe
    _wire.send_frame(w, b"last")
    os.close(w)
    assert _wire.recv_frame(r) == b"last"
    assert _wire.recv_frame(r) is None


def test_writing_to_a_closed_reader_raises_broken_pipe(pipe):
    r, w = pipe
    os.set_blocking(w, False)
    os.close(r)
    with pytest.raises(BrokenPipeError):
        _wire.FrameWriter(w).send(b"nobody listens")


def test_the_workers_buffered_reader_splits_gulps_into_frames(pipe):
    r, w = pipe
    payloads = [b"a", b"", b"x" * 70_000, b"tail" * 10, os.urandom(3 << 20), b"end"]
    writer = threading.Thread(target=lambda: [_wire.send_frame(w, p) for p in payloads])
    writer.start()
    frames = _wire.BlockingFrames(r)
    got = [frames.recv() for _ in payloads]
    writer.join(10)
    assert got == payloads
    os.close(w)
    assert frames.recv() is None


def test_the_buffered_reader_returns_none_on_eof_mid_frame(pipe):
    r, w = pipe
    os.write(w, _wire.frame(b"0123456789")[:12])
    os.close(w)
    assert _wire.BlockingFrames(r).recv() is None
