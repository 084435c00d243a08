"""CPython's own ``test_concurrent_futures`` tests, run against ``gilfree.Executor``.

Run by a CPython 3.13 interpreter that has its ``test`` package and can import
gilfree (``tests/test_cpython_futures.py`` makes such a venv and runs this)::

    PYTHONPATH=src python3.13 tests/cpython_futures_suite.py [--backend thread|process] [-v]
    python3.13 tests/cpython_futures_suite.py --list      # every decision, no run
    python3.13 tests/cpython_futures_suite.py --stdlib    # control: the stdlib's executors

CPython's tests are mixins that an ``ExecutorMixin`` subclass combines with an
``executor_type``; here that is ``functools.partial(gilfree.Executor,
backend=...)``, called as CPython calls it: ``executor_type(max_workers=...,
initializer=..., initargs=...)``. Every test CPython defines in the modules below
gets one of three decisions, all in the tables of this file so that they can be
reviewed in one place:

- run as CPython wrote it (``RUN``);
- run adapted (``ADAPTED``): the test's own body, with only what names the stdlib
  class or its private attributes replaced by the public equivalent; each
  adapted function says what it changed and why;
- skipped with a one-line reason (``SKIP``): the test checks CPython internals
  (``_threads``, ``_processes``, ``_executor_manager_thread``, ``mp_context``,
  ``thread_name_prefix``...) or a design gilfree's SPEC deliberately differs on.

A test found in CPython's sources that no table names runs as written and is
reported as "uncategorized", so a newer CPython cannot silently add tests that
nobody looked at. As regrtest does with ``--fail-env-changed``, a test after
which threads are still running or child processes were left to be reaped
fails: that is how CPython checks that ``shutdown`` leaves nothing behind.

The control run (``--stdlib``) puts ThreadPoolExecutor and ProcessPoolExecutor
through the same classes, adapted tests included: all of them pass there (3.13.0:
38 thread, 53 process), so a test that fails on gilfree fails because of gilfree.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import functools
import logging
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import traceback
import unittest
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool

from test import support
from test.test_concurrent_futures import (
    executor as cf_executor,
)
from test.test_concurrent_futures import (
    test_as_completed,
    test_deadlock,
    test_init,
    test_process_pool,
    test_shutdown,
    test_thread_pool,
    test_wait,
)
from test.test_concurrent_futures.util import BaseTestCase, ExecutorMixin

import gilfree

BACKENDS = ("thread", "process")
#: Per test: past this, faulthandler dumps every stack and the run exits. The
#: slowest CPython test here sleeps 6 s; 120 s is a hang, not a slow machine.
TEST_TIMEOUT_S = 120
#: For the interpreter-exit scripts: start, import gilfree, run a 1 s task, exit.
SCRIPT_TIMEOUT_S = 90
#: CPython's tests wait support.SHORT_TIMEOUT (30 s) for what should take
#: milliseconds (an object freed after its task, an executor breaking); 10 s
#: keeps a failing run short enough for the pytest wrapper's limit.
support.SHORT_TIMEOUT = 10.0
#: ``--stdlib``: the same classes on ThreadPoolExecutor/ProcessPoolExecutor, a
#: control run showing that the adapted tests pass on the executors CPython's
#: tests were written for (so a failure on gilfree is gilfree's).
STDLIB = False


def _stdlib_executor(backend, max_workers=None, *, max_tasks_per_worker=None, **kwargs):
    """The stdlib executor for ``backend``, taking gilfree's spelling of options."""
    if backend == "thread":
        return futures.ThreadPoolExecutor(max_workers, **kwargs)
    if max_tasks_per_worker is not None:
        kwargs["max_tasks_per_child"] = max_tasks_per_worker
    return futures.ProcessPoolExecutor(max_workers, **kwargs)


def _executor_import():
    """The line of a child script that defines ``Executor(backend, ...)``."""
    if not STDLIB:
        return "from gilfree import Executor"
    return (
        "from concurrent.futures import ThreadPoolExecutor as T, ProcessPoolExecutor as P; "
        "Executor = lambda b, *a, **k: (T if b == 'thread' else P)(*a, **k)"
    )


# --------------------------------------------------------------------------------------
# The executor under test
# --------------------------------------------------------------------------------------
class GilfreeMixin(ExecutorMixin):
    """``ExecutorMixin`` with ``gilfree.Executor`` in place of the stdlib's classes."""

    backend = ""  # set by the generated classes

    @property
    def executor_type(self):
        if STDLIB:
            return functools.partial(_stdlib_executor, self.backend)
        return functools.partial(gilfree.Executor, backend=self.backend)

    def setUp(self):
        faulthandler.dump_traceback_later(TEST_TIMEOUT_S, exit=True)
        support.environment_altered = False
        super().setUp()

    def tearDown(self):
        try:
            super().tearDown()  # shutdown(wait=True), then reap children and count threads
        finally:
            faulthandler.cancel_dump_traceback_later()
        if support.environment_altered:
            support.environment_altered = False
            self.fail(
                "threads still running 1 s after shutdown(wait=True), or child "
                "processes left to reap (see the warnings printed above)"
            )


# --------------------------------------------------------------------------------------
# Helpers for the adapted tests
# --------------------------------------------------------------------------------------
#: Processes that live as long as the interpreter by design, not per executor.
_LONG_LIVED = ("resource_tracker", "forkserver", "gilfree.pool._zygote")


def _workers():
    """Threads and live child processes now: what an executor's workers would be."""
    import psutil

    threads = {t for t in threading.enumerate() if t.is_alive()}
    procs = set()
    me = os.getpid()
    for p in psutil.Process(me).children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(p.cmdline())
            # Only the long-lived helper itself: the workers gilfree's zygote
            # forks carry its command line too, and they are an executor's.
            if p.ppid() == me and any(name in cmd for name in _LONG_LIVED):
                continue
        except psutil.Error:
            continue
        procs.add((p.pid, cmd))
    return threads, procs


def _assert_workers_end(test, before, timeout=support.SHORT_TIMEOUT):
    """What CPython checks by joining ``executor._threads``/``_processes``: every
    thread and process started since ``before`` ends (here, within ``timeout``)."""
    threads_before, procs_before = before
    for _ in support.sleeping_retry(timeout, error=False):
        threads, procs = _workers()
        new_threads = threads - threads_before
        new_procs = procs - procs_before
        if not new_threads and not new_procs:
            return
    test.fail(
        f"still running {timeout:.0f} s later: threads {sorted(t.name for t in new_threads)}, "
        f"processes {sorted(new_procs)}"
    )


def _python_ok(test, script):
    """``script_helper.assert_python_ok``, with a time limit and gilfree importable."""
    src = os.path.dirname(os.path.dirname(os.path.abspath(gilfree.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    # Its own session, so that on a hang the workers it started go with it.
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=SCRIPT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        test.fail(
            f"interpreter did not exit within {SCRIPT_TIMEOUT_S} s\n"
            f"stdout: {out!r}\nstderr: {err.decode(errors='replace')}"
        )
    test.assertEqual(proc.returncode, 0, f"exit code {proc.returncode}\nstderr:\n{err.decode()}")
    return proc.returncode, out, err


# --------------------------------------------------------------------------------------
# Adapted tests: CPython's body; what changed is said in each docstring
# --------------------------------------------------------------------------------------
def shutdown_interpreter_shutdown(self):
    """test_shutdown.ExecutorShutdownTest.test_interpreter_shutdown.

    Adapted: the child script builds ``gilfree.Executor(backend)`` instead of
    the stdlib class named by ``executor_type.__name__``. A task submitted and
    never waited for still runs to the end when the interpreter exits."""
    _rc, out, err = _python_ok(
        self,
        f"""if 1:
        {_executor_import()}
        from time import sleep
        from test.test_concurrent_futures.test_shutdown import sleep_and_print
        if __name__ == "__main__":
            t = Executor({self.backend!r}, 5)
            t.submit(sleep_and_print, 1.0, "apple")
        """,
    )
    self.assertFalse(err)
    self.assertEqual(out.strip(), b"apple")


def shutdown_submit_after_interpreter_shutdown(self):
    """test_shutdown.ExecutorShutdownTest.test_submit_after_interpreter_shutdown.

    Adapted: ``gilfree.Executor(backend)`` in the child script (for the process
    backend it submits one task first, as CPython's process variants do). A
    submit from an atexit hook that runs after the executor's own exit hook gets
    ``RuntimeError: cannot schedule new futures``."""
    first = "t.submit(id, 42).result()" if self.backend == "process" else "pass"
    _rc, out, err = _python_ok(
        self,
        f"""if 1:
        import atexit
        @atexit.register
        def run_last():
            try:
                t.submit(id, None)
            except RuntimeError:
                print("runtime-error")
                raise
        {_executor_import()}
        if __name__ == "__main__":
            t = Executor({self.backend!r}, 5)
            {first}
        """,
    )
    self.assertIn("RuntimeError: cannot schedule new futures", err.decode())
    self.assertEqual(out.strip(), b"runtime-error")


def shutdown_hang_gh83386(self):
    """test_shutdown.ExecutorShutdownTest.test_hang_gh83386.

    Adapted: ``gilfree.Executor(backend, max_workers=3)`` in the child script.
    CPython skips this for ProcessPoolExecutor only because its own hangs
    (gh-83386); gilfree's process backend is held to the thread pool's
    behaviour: ``shutdown(wait=False)`` returns, the running task still
    finishes, and the interpreter exits."""
    if STDLIB and self.backend == "process":
        self.skipTest("ProcessPoolExecutor hangs here (gh-83386); CPython skips it too")
    _rc, out, err = _python_ok(
        self,
        f"""if True:
        {_executor_import()}
        from test.test_concurrent_futures.test_shutdown import sleep_and_print
        if __name__ == "__main__":
            t = Executor({self.backend!r}, max_workers=3)
            t.submit(sleep_and_print, 1.0, "apple")
            t.shutdown(wait=False)
        """,
    )
    self.assertFalse(err)
    self.assertEqual(out.strip(), b"apple")


def shutdown_cancel_futures_wait_false(self):
    """test_shutdown.ThreadPoolShutdownTest.test_cancel_futures_wait_false.

    Adapted: ``gilfree.Executor("thread")`` in the child script."""
    _rc, out, err = _python_ok(
        self,
        f"""if True:
        {_executor_import()}
        from test.test_concurrent_futures.test_shutdown import sleep_and_print
        if __name__ == "__main__":
            t = Executor({self.backend!r})
            t.submit(sleep_and_print, .1, "apple")
            t.shutdown(wait=False, cancel_futures=True)
        """,
    )
    self.assertFalse(err)
    self.assertIn(out.strip(), [b"apple", b""])


def shutdown_context_manager_shutdown(self):
    """test_shutdown.{Thread,Process}PoolShutdownTest.test_context_manager_shutdown.

    Adapted: the executor is ``executor_type(max_workers=5)``, and instead of
    joining ``e._threads``/``e._processes`` the test checks that every thread
    and child process started since it began has ended after the ``with``."""
    before = _workers()
    with self.executor_type(max_workers=5) as e:
        self.assertEqual(list(e.map(abs, range(-5, 5))), [5, 4, 3, 2, 1, 0, 1, 2, 3, 4])
    _assert_workers_end(self, before, timeout=5.0)  # a little grace for a loaded machine


def shutdown_del_shutdown(self):
    """test_shutdown.{Thread,Process}PoolShutdownTest.test_del_shutdown.

    Adapted: ``executor_type(max_workers=5)``; instead of joining the private
    threads/processes/manager thread, waits (bounded) until every thread and
    process the executor started has ended once the executor is dropped, then
    checks that the ``map`` results were all computed, as CPython does."""
    before = _workers()
    executor = self.executor_type(max_workers=5)
    res = executor.map(abs, range(-5, 5))
    del executor
    support.gc_collect()
    _assert_workers_end(self, before)
    self.assertTrue(all(r == abs(v) for r, v in zip(res, range(-5, 5), strict=True)))


def shutdown_shutdown_no_wait(self):
    """test_shutdown.{Thread,Process}PoolShutdownTest.test_shutdown_no_wait.

    Adapted as test_del_shutdown, with ``shutdown(wait=False)`` in place of
    dropping the executor."""
    before = _workers()
    executor = self.executor_type(max_workers=5)
    res = executor.map(abs, range(-5, 5))
    executor.shutdown(wait=False)
    _assert_workers_end(self, before)
    self.assertTrue(all(r == abs(v) for r, v in zip(res, range(-5, 5), strict=True)))


def init_failing_initializer(self):
    """test_init.FailingInitializerMixin.test_initializer.

    Adapted in two places. (1) CPython polls the private ``executor._broken``
    until set; here the public consequence is polled: ``submit`` raises
    ``BrokenExecutor``. (2) CPython reads the initializer's traceback from the
    ``concurrent.futures`` logger (from a multiprocessing queue for process
    pools); gilfree may log it on any logger of this process or attach it to the
    ``BrokenExecutor`` (``__cause__``/message): either way the user can see
    ``ValueError: error in initializer``."""
    records = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: records.append(logging.Formatter().format(record))
    root = logging.getLogger()
    root.addHandler(handler)
    broken = []
    try:
        try:
            future = self.executor.submit(test_init.get_init_status)
        except futures.BrokenExecutor as exc:
            broken.append(exc)  # perhaps the executor is already broken
        else:
            with self.assertRaises(futures.BrokenExecutor) as cm:
                future.result()
            broken.append(cm.exception)
        # At some point, the executor should break ... and from this point
        # submit() is guaranteed to fail.
        for _ in support.sleeping_retry(support.SHORT_TIMEOUT, "executor not broken"):
            try:
                self.executor.submit(test_init.get_init_status).cancel()
            except futures.BrokenExecutor as exc:
                broken.append(exc)
                break
        with self.assertRaises(futures.BrokenExecutor):
            self.executor.submit(test_init.get_init_status)
    finally:
        root.removeHandler(handler)
    if STDLIB and self.backend == "process":
        return  # ProcessPoolExecutor logs it in the child only (CPython reads it via a queue)
    seen = records + ["".join(traceback.format_exception(exc)) for exc in broken]
    self.assertTrue(any("ValueError: error in initializer" in text for text in seen), seen)


def process_traceback(self):
    """test_process_pool.ProcessPoolExecutorTest.test_traceback.

    Adapted: CPython requires ``type(exc.__cause__) is
    concurrent.futures.process._RemoteTraceback`` (a private class) and reads
    its ``.tb``; here the cause may be any exception whose text holds the
    worker's source line, and the function comes from CPython's class
    (importable in workers), not from this file's copy of it. The rest is
    CPython's: same type and args, and ``sys.excepthook`` shows the worker-side
    line."""
    future = self.executor.submit(test_process_pool.ProcessPoolExecutorTest._test_traceback)
    with self.assertRaises(Exception) as cm:
        future.result()

    exc = cm.exception
    self.assertIs(type(exc), RuntimeError)
    self.assertEqual(exc.args, (123,))
    cause = exc.__cause__
    self.assertIsNotNone(cause, "no worker-side traceback as __cause__")
    self.assertIn("raise RuntimeError(123) # some comment", str(cause))

    with support.captured_stderr() as f1:
        try:
            raise exc
        except RuntimeError:
            sys.excepthook(*sys.exc_info())
    self.assertIn("raise RuntimeError(123) # some comment", f1.getvalue())


def process_ressources_gced_in_workers(self):
    """test_process_pool.ProcessPoolExecutorTest.test_ressources_gced_in_workers.

    Adapted: the Manager comes from a "spawn" context, not from the test's
    ``mp_context`` (gilfree takes none); and the check runs on two fresh
    executors, one made while this is the process's only thread and one made
    while another thread runs (a service's usual state, and gilfree starts
    its workers differently then), so that the outcome does not depend on
    which threads earlier tests left. A task's argument -- here a Manager
    proxy -- arrives usable and is released in the worker once the task is done."""
    mgr = multiprocessing.get_context("spawn").Manager()
    try:
        for other_thread in (False, True):
            with self.subTest(other_thread=other_thread):
                stop = threading.Event()
                helper = threading.Thread(target=stop.wait) if other_thread else None
                if helper is not None:
                    helper.start()
                executor = self.executor_type(max_workers=1)
                try:
                    obj = test_process_pool.EventfulGCObj(mgr)
                    future = executor.submit(id, obj)
                    future.result()

                    self.assertTrue(obj.event.wait(timeout=1))

                    support.gc_collect()
                    obj = None
                    support.gc_collect()
                finally:
                    executor.shutdown()
                    stop.set()
                    if helper is not None:
                        helper.join()
    finally:
        mgr.shutdown()
        mgr.join()


def process_max_tasks_per_child(self):
    """test_process_pool.ProcessPoolExecutorTest.test_max_tasks_per_child.

    Adapted: gilfree spells the stdlib's ``max_tasks_per_child`` as
    ``max_tasks_per_worker`` and takes no ``mp_context`` (``max_workers`` is
    given by name: gilfree's first positional parameter is ``backend``); the
    two checks of ``len(executor._processes) == 1`` are dropped (one worker is
    asked for)."""
    executor = self.executor_type(max_workers=1, max_tasks_per_worker=3)
    f1 = executor.submit(os.getpid)
    original_pid = f1.result()
    # The worker pid remains the same as the worker could be reused
    f2 = executor.submit(os.getpid)
    self.assertEqual(f2.result(), original_pid)
    f3 = executor.submit(os.getpid)
    self.assertEqual(f3.result(), original_pid)

    # A new worker is spawned, with a statistically different pid,
    # while the previous was reaped.
    f4 = executor.submit(os.getpid)
    new_pid = f4.result()
    self.assertNotEqual(original_pid, new_pid)

    executor.shutdown()


def process_max_tasks_early_shutdown(self):
    """test_process_pool.ProcessPoolExecutorTest.test_max_tasks_early_shutdown.

    Adapted: ``max_tasks_per_worker=1`` for the stdlib's
    ``max_tasks_per_child=1``, no ``mp_context``, ``max_workers=3`` by name."""
    executor = self.executor_type(max_workers=3, max_tasks_per_worker=1)
    fs = [executor.submit(cf_executor.mul, i, i) for i in range(6)]
    executor.shutdown()
    for i, future in enumerate(fs):
        self.assertEqual(future.result(), cf_executor.mul(i, i))


# --- the crash table of test_deadlock.ExecutorDeadlockTest ----------------------------
def _gilfree_errors(*names):
    return tuple(e for e in (getattr(gilfree, n, None) for n in names) if e is not None)


#: What each crash case must fail with on gilfree, where CPython's type differs.
#: The SPEC's errors: a worker that exits or is killed -> WorkerDied (the pool
#: replaces it; CPython's whole pool breaks: BrokenProcessPool); a function,
#: argument or result that cannot be sent -> SerializationError (CPython:
#: PicklingError, or BrokenProcessPool when unpickling fails). A task's own
#: exception keeps its type; ``sys.exit`` in a task may surface as SystemExit
#: (CPython) or as the worker's death, and ``sys.exit`` while unpickling an
#: argument in the worker as the worker's death (CPython) or as that argument's
#: SerializationError (the pool goes on).
DEADLOCK_EXPECTS = {
    "test_error_at_task_pickle": (pickle.PicklingError, *_gilfree_errors("SerializationError")),
    "test_exit_at_task_unpickle": _gilfree_errors("WorkerDied", "SerializationError"),
    "test_error_at_task_unpickle": _gilfree_errors("SerializationError"),
    "test_crash_at_task_unpickle": _gilfree_errors("WorkerDied"),
    "test_crash_during_func_exec_on_worker": _gilfree_errors("WorkerDied"),
    "test_exit_during_func_exec_on_worker": (SystemExit, *_gilfree_errors("WorkerDied")),
    "test_error_during_func_exec_on_worker": (RuntimeError,),
    "test_crash_during_result_pickle_on_worker": _gilfree_errors("WorkerDied"),
    "test_exit_during_result_pickle_on_worker": (SystemExit, *_gilfree_errors("WorkerDied")),
    "test_error_during_result_pickle_on_worker": (
        pickle.PicklingError,
        *_gilfree_errors("SerializationError"),
    ),
    "test_error_during_result_unpickle_in_result_handler": _gilfree_errors("SerializationError"),
    "test_exit_during_result_unpickle_in_result_handler": _gilfree_errors("SerializationError"),
    "test_shutdown_deadlock": _gilfree_errors("WorkerDied"),
    "test_crash_big_data": _gilfree_errors("WorkerDied"),
}


def _expects(test_name, cpython_error):
    return cpython_error if STDLIB else DEADLOCK_EXPECTS[test_name]


def deadlock_check_crash(self, error, func, *args, ignore_stderr=False):
    """test_deadlock.ExecutorDeadlockTest._check_crash, the helper every crash case calls.

    Adapted: no ``mp_context``; the expected exception is looked up in
    ``DEADLOCK_EXPECTS`` by test name (the SPEC's types) instead of CPython's;
    on a deadlock the executor is shut down without waiting instead of
    terminating ``executor._processes``; 60 s instead of LONG_TIMEOUT (5 min)."""
    self.executor.shutdown(wait=True)
    executor = self.executor_type(max_workers=2)
    expected = error if STDLIB else DEADLOCK_EXPECTS[self._testMethodName]
    try:
        res = executor.submit(func, *args)
        cm = support.captured_stderr() if ignore_stderr else contextlib.nullcontext()
        try:
            with self.assertRaises(expected), cm:
                res.result(timeout=60)
        except futures.TimeoutError:
            self._fail_on_deadlock(executor)
    finally:  # CPython's shuts down only on success; a failure here must not leak it
        executor.shutdown(wait=True)


def deadlock_fail_on_deadlock(self, executor):
    """test_deadlock.ExecutorDeadlockTest._fail_on_deadlock, without ``_processes``."""
    faulthandler.dump_traceback(file=sys.__stderr__)
    executor.shutdown(wait=False, cancel_futures=True)
    self.fail("Executor deadlock: every thread's stack is on stderr")


def deadlock_shutdown_deadlock(self):
    """test_deadlock.ExecutorDeadlockTest.test_shutdown_deadlock.

    Adapted: no ``mp_context``; the task that crashes its worker after
    ``shutdown(wait=True)`` fails with ``WorkerDied`` (CPython:
    BrokenProcessPool)."""
    self.executor.shutdown(wait=True)
    with self.executor_type(max_workers=2) as executor:
        self.executor = executor  # Allow clean up in fail_on_deadlock
        f = executor.submit(test_deadlock._crash, delay=0.1)
        executor.shutdown(wait=True)
        with self.assertRaises(_expects("test_shutdown_deadlock", BrokenProcessPool)):
            f.result()


def deadlock_shutdown_deadlock_pickle(self):
    """test_deadlock.ExecutorDeadlockTest.test_shutdown_deadlock_pickle.

    Adapted: no ``mp_context``; the final join of the private
    ``_executor_manager_thread`` is dropped (the leak check after every test
    covers threads left running); the task whose argument cannot be pickled
    fails with ``SerializationError`` or PicklingError on its future."""
    self.executor.shutdown(wait=True)
    with self.executor_type(max_workers=2) as executor:
        self.executor = executor  # Allow clean up in fail_on_deadlock
        executor.submit(id, 42).result()
        f = executor.submit(id, test_deadlock.ErrorAtPickle())
        executor.shutdown(wait=False)
        with self.assertRaises(_expects("test_error_at_task_pickle", pickle.PicklingError)):
            f.result()


def deadlock_crash_big_data(self):
    """test_deadlock.ExecutorDeadlockTest.test_crash_big_data.

    Adapted: no ``mp_context``; ``map`` over tasks that crash their worker while
    a pipe-sized argument is in flight raises ``WorkerDied`` (CPython:
    BrokenProcessPool) instead of hanging."""
    self.executor.shutdown(wait=True)
    data = "a" * support.PIPE_MAX_SIZE
    with self.executor_type(max_workers=2) as executor:
        self.executor = executor  # Allow clean up in fail_on_deadlock
        with self.assertRaises(_expects("test_crash_big_data", BrokenProcessPool)):
            list(executor.map(test_deadlock._crash_with_data, [data] * 10))
    executor.shutdown(wait=True)


# --------------------------------------------------------------------------------------
# The decisions
# --------------------------------------------------------------------------------------
RUN = ("run", None)


def SKIP(reason):
    return ("skip", reason)


def ADAPTED(fn):
    return ("adapted", fn)


#: CPython's test body, through the adapted _check_crash helper.
_VIA_CHECK_CRASH = ("run", "CPython's body; _check_crash expects DEADLOCK_EXPECTS[test]")
_JOINS = "joins the stdlib's private executor._threads/_processes"

#: (module, class, backends it applies to, whether CPython's class is a mixin to
#: inherit or a concrete class whose own methods are taken, decisions by test name)
SOURCES = [
    (
        cf_executor,
        "ExecutorTest",
        BACKENDS,
        "mixin",
        {
            "test_submit": RUN,
            "test_submit_keyword": RUN,
            "test_map": RUN,
            "test_map_exception": RUN,
            "test_map_timeout": RUN,
            "test_shutdown_race_issue12456": RUN,
            "test_no_stale_references": RUN,
            "test_max_workers_negative": RUN,
            "test_free_reference": RUN,
        },
    ),
    (
        test_shutdown,
        "ExecutorShutdownTest",
        BACKENDS,
        "mixin",
        {
            "test_run_after_shutdown": RUN,
            "test_interpreter_shutdown": ADAPTED(shutdown_interpreter_shutdown),
            "test_submit_after_interpreter_shutdown": ADAPTED(
                shutdown_submit_after_interpreter_shutdown
            ),
            "test_hang_issue12364": RUN,
            "test_cancel_futures": RUN,
            "test_hang_gh83386": ADAPTED(shutdown_hang_gh83386),
            "test_hang_gh94440": RUN,
        },
    ),
    (
        test_shutdown,
        "ThreadPoolShutdownTest",
        ("thread",),
        "own",
        {
            "test_threads_terminate": SKIP(
                "counts and joins executor._threads: how many threads start on demand is internal"
            ),
            "test_context_manager_shutdown": ADAPTED(shutdown_context_manager_shutdown),
            "test_del_shutdown": ADAPTED(shutdown_del_shutdown),
            "test_shutdown_no_wait": ADAPTED(shutdown_shutdown_no_wait),
            "test_thread_names_assigned": SKIP(
                "thread_name_prefix= and the stdlib's thread names: gilfree has no such option"
            ),
            "test_thread_names_default": SKIP(
                "asserts the name 'ThreadPoolExecutor-N_M' of the stdlib's private threads"
            ),
            "test_cancel_futures_wait_false": ADAPTED(shutdown_cancel_futures_wait_false),
        },
    ),
    (
        test_shutdown,
        "ProcessPoolShutdownTest",
        ("process",),
        "own",
        {
            "test_processes_terminate": SKIP(
                "counts executor._processes (pre-spawn vs on-demand is internal) and "
                "passes a Semaphore of the test's mp_context"
            ),
            "test_context_manager_shutdown": ADAPTED(shutdown_context_manager_shutdown),
            "test_del_shutdown": ADAPTED(shutdown_del_shutdown),
            "test_shutdown_no_wait": ADAPTED(shutdown_shutdown_no_wait),
        },
    ),
    (
        test_init,
        "InitializerMixin",
        BACKENDS,
        "mixin",
        {"test_initializer": RUN},
    ),
    (
        test_init,
        "FailingInitializerMixin",
        BACKENDS,
        "mixin",
        {"test_initializer": ADAPTED(init_failing_initializer)},
    ),
    (
        test_init,
        "FailingInitializerResourcesTest",
        ("process",),
        "own",
        {
            "test_spawn": SKIP(
                "exit code of the stdlib multiprocessing resource_tracker after "
                "ProcessPoolExecutor's spawn variant (gh-104090)"
            ),
            "test_forkserver": SKIP(
                "exit code of the stdlib multiprocessing resource_tracker after "
                "ProcessPoolExecutor's forkserver variant (gh-104090)"
            ),
        },
    ),
    (
        test_wait,
        "WaitTests",
        BACKENDS,
        "mixin",
        {
            "test_20369": RUN,
            "test_first_completed": RUN,
            "test_first_completed_some_already_completed": RUN,
            "test_first_exception": RUN,
            "test_first_exception_some_already_complete": RUN,
            "test_first_exception_one_already_failed": RUN,
            "test_all_completed": RUN,
            "test_timeout": RUN,
        },
    ),
    (
        test_wait,
        "ThreadPoolWaitTests",
        ("thread",),
        "own",
        {"test_pending_calls_race": RUN},
    ),
    (
        test_as_completed,
        "AsCompletedTests",
        BACKENDS,
        "mixin",
        {
            "test_no_timeout": RUN,
            "test_future_times_out": RUN,
            "test_duplicate_futures": RUN,
            "test_free_reference_yielded_future": RUN,
            "test_correct_timeout_exception_msg": RUN,
        },
    ),
    (
        test_thread_pool,
        "ThreadPoolExecutorTest",
        ("thread",),
        "own",
        {
            "test_map_submits_without_iteration": RUN,
            "test_default_workers": SKIP(
                "executor._max_workers and the stdlib's min(32, cpus + 4); gilfree's "
                "default is its own (SPEC: enough to overlap I/O)"
            ),
            "test_saturation": SKIP(f"{_JOINS}: counts executor._threads"),
            "test_idle_thread_reuse": SKIP("counts executor._threads (on-demand start policy)"),
            "test_hang_global_shutdown_lock": SKIP(
                "the stdlib's private _global_shutdown_lock across fork; names "
                "ThreadPoolExecutor and ProcessPoolExecutor"
            ),
            "test_executor_map_current_future_cancel": RUN,
        },
    ),
    (
        test_process_pool,
        "ProcessPoolExecutorTest",
        ("process",),
        "own",
        {
            "test_max_workers_too_large": SKIP("Windows-only limit of the stdlib (61 handles)"),
            "test_killed_child": SKIP(
                "terminates a worker through executor._processes and expects the whole "
                "pool broken; by design (SPEC) gilfree replaces the worker and fails "
                "only that task with WorkerDied (tests/test_pool_faults.py)"
            ),
            "test_map_chunksize": RUN,
            "test_traceback": ADAPTED(process_traceback),
            "test_ressources_gced_in_workers": ADAPTED(process_ressources_gced_in_workers),
            "test_saturation": SKIP("counts executor._processes, Semaphore of mp_context"),
            "test_idle_process_reuse_one": SKIP(
                "counts executor._processes (on-demand start policy)"
            ),
            "test_idle_process_reuse_multiple": SKIP(
                "counts executor._processes (on-demand start policy)"
            ),
            "test_max_tasks_per_child": ADAPTED(process_max_tasks_per_child),
            "test_max_tasks_per_child_defaults_to_spawn_context": SKIP(
                "reads executor._mp_context (which start method the stdlib picks)"
            ),
            "test_max_tasks_early_shutdown": ADAPTED(process_max_tasks_early_shutdown),
            "test_python_finalization_error": SKIP(
                "mocks threading._start_joinable_thread to break the stdlib's queue feeder thread"
            ),
        },
    ),
    (
        test_deadlock,
        "ExecutorDeadlockTest",
        ("process",),
        "mixin",
        {
            "_check_crash": ADAPTED(deadlock_check_crash),
            "_fail_on_deadlock": ADAPTED(deadlock_fail_on_deadlock),
            **{
                name: _VIA_CHECK_CRASH
                for name in DEADLOCK_EXPECTS
                if name not in ("test_shutdown_deadlock", "test_crash_big_data")
            },
            "test_shutdown_deadlock": ADAPTED(deadlock_shutdown_deadlock),
            "test_shutdown_deadlock_pickle": ADAPTED(deadlock_shutdown_deadlock_pickle),
            "test_crash_big_data": ADAPTED(deadlock_crash_big_data),
            "test_gh105829_should_not_deadlock_if_wakeup_pipe_full": SKIP(
                "patches the stdlib's private _ExecutorManagerThread and _ThreadWakeup"
            ),
        },
    ),
]

#: Whole modules of the package that test no executor.
NOT_APPLICABLE = {
    "test_future": "tests concurrent.futures.Future itself, which gilfree returns unchanged",
}


# --------------------------------------------------------------------------------------
# Building the test classes
# --------------------------------------------------------------------------------------
def _own_tests(cls):
    return {n: v for n, v in vars(cls).items() if n.startswith("test_")}


def _skipped(reason):
    @unittest.skip(reason)
    def test(self):
        pass

    return test


def build(backends):
    """The unittest classes, one per (source class, backend), and the decisions table."""
    classes = []
    decisions = []  # (backend, "module.Class.test", kind, reason-or-note)
    for module, cls_name, applies, shape, table in SOURCES:
        src = getattr(module, cls_name)
        short = module.__name__.rsplit(".", 1)[-1]
        for backend in backends:
            if backend not in applies:
                continue
            if shape == "mixin":
                bases = (src, GilfreeMixin, BaseTestCase)
                found = {n for n in dir(src) if n.startswith("test_")}
            elif shape == "own":  # a mixin of CPython's whose parent is run elsewhere
                bases = (GilfreeMixin, BaseTestCase)
                found = set(_own_tests(src))
            else:
                bases = (GilfreeMixin, BaseTestCase)
                found = set(_own_tests(src))
            body = {"backend": backend, "source_class": cls_name, "__module__": __name__}
            if shape != "mixin":
                body.update(_own_tests(src))
                # helpers the copied tests use as self._x (e.g. _test_traceback)
                for name, value in vars(src).items():
                    if name.startswith("_") and not name.startswith("__"):
                        body[name] = value
            for name in sorted(found | set(table)):
                kind, arg = table.get(name, ("uncategorized", None))
                if kind == "skip":
                    body[name] = _skipped(arg)
                elif kind == "adapted":
                    body[name] = arg
                if name.startswith("test_"):
                    note = arg if kind in ("skip", "run") and arg else ""
                    decisions.append((backend, f"{short}.{cls_name}.{name}", kind, note))
            name = f"Gilfree{backend.title()}{cls_name.removesuffix('Mixin')}"
            classes.append(type(name, bases, body))
    return classes, decisions


# --------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------
class _Result(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passed = []

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed.append(test)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=[*BACKENDS, "all"], default="all")
    parser.add_argument(
        "-k",
        dest="patterns",
        action="append",
        default=[],
        help="only tests whose id contains this (repeatable)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--list", action="store_true", help="print the decisions and exit")
    parser.add_argument(
        "--stdlib",
        action="store_true",
        help="control run: the same tests on the stdlib's executors",
    )
    args = parser.parse_args(argv)
    global STDLIB
    STDLIB = args.stdlib
    backends = BACKENDS if args.backend == "all" else (args.backend,)
    classes, decisions = build(backends)

    if args.list:
        for backend, test, kind, note in decisions:
            print(f"{backend:8} {kind:13} {test}" + (f"  -- {note}" if note else ""))
        for module, why in NOT_APPLICABLE.items():
            print(f"{'-':8} {'n/a':13} {module}  -- {why}")
        return 0

    loader = unittest.TestLoader()
    if args.patterns:
        loader.testNamePatterns = [f"*{p}*" for p in args.patterns]
    suite = unittest.TestSuite(loader.loadTestsFromTestCase(c) for c in classes)
    under_test = "the stdlib's executors (control run)" if STDLIB else f"gilfree {gilfree.__file__}"
    print(
        f"{under_test} on Python {sys.version.split()[0]}: "
        f"{suite.countTestCases()} tests, backends {', '.join(backends)}",
        flush=True,
    )
    runner = unittest.TextTestRunner(
        stream=sys.stdout, verbosity=2 if args.verbose else 1, resultclass=_Result
    )
    result = runner.run(suite)

    print(f"\n== summary: CPython's test_concurrent_futures on {under_test} ==")
    kind_of = {(b, t.rsplit(".", 1)[-1], t.split(".")[1]): k for b, t, k, _ in decisions}
    # One outcome per test: a test that failed and then failed its tearDown counts once.
    outcome = {t.id(): (t, "passed", "") for t in result.passed}
    for bucket, label in (
        (result.skipped, "skipped"),
        (result.errors, "ERROR"),
        (result.failures, "FAILED"),
    ):
        for test, why in bucket:
            test = getattr(test, "test_case", test)  # a subTest counts for its test
            outcome[test.id()] = (test, label, why if label == "skipped" else "")
    for backend in backends:
        rows = [r for r in outcome.values() if getattr(r[0], "backend", None) == backend]
        n = {o: sum(1 for r in rows if r[1] == o) for o in ("passed", "FAILED", "ERROR", "skipped")}
        print(
            f"{backend}: {len(rows)} tests: {n['passed']} passed, {n['FAILED']} failed, "
            f"{n['ERROR']} errors, {n['skipped']} skipped"
        )
        for test, label, why in sorted(rows, key=lambda r: (r[1], r[0].id())):
            if label == "passed":
                continue
            kind = kind_of.get((backend, test._testMethodName, test.source_class), "")
            extra = f" -- {why}" if why else f" [{kind}]"
            print(f"  {label:7} {type(test).__name__}.{test._testMethodName}{extra}")
    uncategorized = sorted({t for _, t, k, _ in decisions if k == "uncategorized"})
    if uncategorized:
        print("uncategorized (run as written; decide and list them):", *uncategorized, sep="\n  ")
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
