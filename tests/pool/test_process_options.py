"""The process backend takes its sizes in bytes, whatever form the caller gave."""

from __future__ import annotations

import pytest

import gilfree
from gilfree.errors import ConfigurationError


def test_share_threshold_none_is_refused_when_the_pool_is_made():
    # Once it reached the pool and failed each array's pickling with a TypeError.
    with pytest.raises(ConfigurationError, match="share_threshold=None"):
        gilfree.map(abs, [-1], backend="process", share_threshold=None)


def test_sizes_given_as_strings_reach_the_pool_as_bytes():
    with gilfree.Executor(
        backend="process", workers=1, share_threshold="2KiB", max_worker_memory="1GB"
    ) as ex:
        assert ex.submit(abs, -3).result() == 3
        (backend,) = ex._backends.values()
        assert backend._pool._arena.threshold == 2048
        assert backend._pool._manager._crew.config["max_memory"] == 10**9
