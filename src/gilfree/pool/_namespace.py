"""One global namespace in a worker for the functions of the caller's ``__main__``.

cloudpickle sends a function of ``__main__`` by value, with a namespace of its
own holding the globals it names; two functions pickled apart arrive with two
namespaces. So a global that an Executor's ``initializer`` set was not seen by
the tasks (``TABLE = None`` at the top of a script, the initializer fills it,
every task read None), where ``multiprocessing`` and ``ProcessPoolExecutor``
run both against the worker's one ``__main__``.

Here such a function is rebound, once as it arrives, to this process's
``__main__`` namespace (the caller's own, forked, on the fork path). What it
brings merges in name by name: the caller's value replaces the worker's unless
the worker changed that name since the caller last sent it (the initializer's
work is kept; a global the caller changed between two maps arrives).
"""

from __future__ import annotations

import functools
import sys
import types
from typing import Any

#: The object the caller last sent for each name, to tell the worker's own
#: changes from the caller's (see the module docstring).
_sent: dict[str, Any] = {}
_MISSING = object()


def shared(obj: Any) -> Any:
    """``obj`` (a function, a partial of one, or one of gilfree's adapters holding
    one in ``fn``) with each by-value function of the caller's ``__main__``
    bound to ours. Any other callable is the user's, and left as it is."""
    if isinstance(obj, types.FunctionType):
        return _rebind(obj) if _by_value_main(obj) else obj
    if isinstance(obj, functools.partial):
        func = shared(obj.func)
        return obj if func is obj.func else functools.partial(func, *obj.args, **obj.keywords)
    if type(obj).__module__.startswith("gilfree.") and hasattr(obj, "fn"):
        rebound = shared(obj.fn)  # _StarCall, OnThreads...: plain slots
        if rebound is not obj.fn:
            obj.fn = rebound
    return obj


def _by_value_main(fn: types.FunctionType) -> bool:
    main = sys.modules.get("__main__")
    return fn.__module__ == "__main__" and main is not None and fn.__globals__ is not vars(main)


def _rebind(fn: types.FunctionType) -> types.FunctionType:
    private = fn.__globals__
    namespace = vars(sys.modules["__main__"])
    # The functions that came with it share its namespace (helpers, itself
    # when recursive): they move with it.
    moved = {
        id(f): _copy(f, namespace)
        for f in (fn, *private.values())
        if isinstance(f, types.FunctionType) and f.__globals__ is private
    }
    for name, value in private.items():
        if name.startswith("__") and name.endswith("__"):
            continue  # the worker's own __name__, __builtins__...
        value = moved.get(id(value), value)
        if name not in _sent or namespace.get(name, _MISSING) is _sent[name]:
            namespace[name] = value
        _sent[name] = value
    return moved[id(fn)]


def _copy(fn: types.FunctionType, namespace: dict[str, Any]) -> types.FunctionType:
    new = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__qualname__ = fn.__qualname__
    new.__module__ = fn.__module__
    new.__doc__ = fn.__doc__
    new.__annotations__ = fn.__annotations__
    new.__dict__.update(fn.__dict__)
    return new
