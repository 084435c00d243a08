"""Which callables block on I/O or run C code that releases the GIL, by name.

The tables the bytecode reader (``_bytecode``) matches a resolved call against:
qualified-name prefixes of modules and functions, and, for a method called on
an object it cannot resolve, the method's name alone.
"""

from __future__ import annotations

import types
from typing import Any

# Qualified-name prefixes of calls that block on I/O -> what they wait for.
IO_CALLS: dict[str, str] = {
    "time.sleep": "sleeps",
    "socket": "waits on a socket",
    "_socket": "waits on a socket",
    "select": "waits in select",
    "selectors": "waits in select",
    "ssl": "waits on a TLS socket",
    "subprocess": "waits for a subprocess",
    "os.system": "waits for a subprocess",
    "os.popen": "waits for a subprocess",
    "os.wait": "waits for a subprocess",
    "os.waitpid": "waits for a subprocess",
    "posix.system": "waits for a subprocess",
    "posix.waitpid": "waits for a subprocess",
    "io.open": "opens a file",
    "builtins.open": "opens a file",
    "_io.open": "opens a file",
    "os.read": "reads a file descriptor",
    "os.write": "writes a file descriptor",
    "posix.read": "reads a file descriptor",
    "posix.write": "writes a file descriptor",
    "shutil.copy": "copies files",
    "shutil.copyfile": "copies files",
    "shutil.copyfileobj": "copies files",
    "urllib.request": "makes an HTTP request",
    "urllib3": "makes an HTTP request",
    "http.client": "makes an HTTP request",
    "requests": "makes an HTTP request",
    "httpx": "makes an HTTP request",
    "ftplib": "talks to an FTP server",
    "smtplib": "talks to a mail server",
    "sqlite3": "queries a database",
    "_sqlite3": "queries a database",
    "psycopg": "queries a database",
    "psycopg2": "queries a database",
    "pymysql": "queries a database",
    "MySQLdb": "queries a database",
    "redis": "talks to a Redis server",
    "pymongo": "queries a database",
    "threading.Event.wait": "waits on an event",
    "queue.Queue.get": "waits on a queue",
}

# Qualified-name prefixes of C code that releases the GIL on large inputs.
RELEASING_CALLS: dict[str, str] = {
    "hashlib": "hashes in C",
    "_hashlib": "hashes in C",
    "_blake2": "hashes in C",
    "_sha256": "hashes in C",
    "_sha512": "hashes in C",
    "_sha1": "hashes in C",
    "_md5": "hashes in C",
    "_sha3": "hashes in C",
    "zlib": "compresses in C",
    "bz2": "compresses in C",
    "_bz2": "compresses in C",
    "lzma": "compresses in C",
    "_lzma": "compresses in C",
    "numpy": "runs NumPy code in C",
    "scipy": "runs SciPy code in C",
    "cv2": "runs OpenCV code in C",
    "PIL": "runs Pillow code in C",
}

# Method names that, on an object we cannot resolve, most likely do I/O or
# release the GIL. Generic names (get, update, send on generators) are left
# out on purpose: a wrong guess costs more than a missed one, and the probe
# measures the truth anyway.
IO_METHODS: dict[str, str] = {
    name: "probably does I/O"
    for name in (
        "recv",
        "recv_into",
        "recvfrom",
        "sendall",
        "sendto",
        "accept",
        "connect",
        "makefile",
        "urlopen",
        "getresponse",
        "readline",
        "readlines",
        "readinto",
        "read_text",
        "read_bytes",
        "write_text",
        "write_bytes",
        "execute",
        "executemany",
        "fetchone",
        "fetchall",
        "fetchmany",
        "communicate",
    )
}
RELEASING_METHODS: dict[str, str] = {
    name: "probably runs C code that releases the GIL"
    for name in ("hexdigest", "digest", "compress", "decompress")
}


def qualified_name(obj: Any) -> str | None:
    """``module.qualname`` of a module, class or function; None for others."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if isinstance(name, str):
        if not isinstance(module, str) or not module:
            self_mod = getattr(getattr(obj, "__self__", None), "__name__", None)
            module = self_mod if isinstance(self_mod, str) else "builtins"
        return f"{module}.{name}"
    return None


def _match(table: dict[str, str], qualname: str) -> str | None:
    parts = qualname.split(".")
    for end in range(len(parts), 0, -1):
        hit = table.get(".".join(parts[:end]))
        if hit is not None:
            return hit
    return None


def classify_name(qualname: str) -> tuple[str, str] | None:
    """``(kind, why)`` for a fully qualified callable name, or None."""
    why = _match(IO_CALLS, qualname)
    if why is not None:
        return "io", why
    why = _match(RELEASING_CALLS, qualname)
    if why is not None:
        return "releases_gil", why
    return None
