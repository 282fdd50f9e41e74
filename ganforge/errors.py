"""The project's error type, kept free of heavy imports so the command line can catch it cheaply.

A `GanforgeError` is a mistake the user can fix (a bad option, file or dataset): the command line
prints its message as one line. Any other exception is a fault and keeps its traceback.
"""

from __future__ import annotations

import importlib.util


class GanforgeError(Exception):
    """A problem the message fully explains (it names the file or option at fault)."""


class OptionError(GanforgeError, ValueError):
    """An option or input value that cannot work (a ValueError too, for callers that catch those)."""


class GanforgeWarning(UserWarning):
    """Something the user should know that does not stop the command (files skipped, say): the
    command line prints its message as one line, without Python's source line."""


class MissingExtra(GanforgeError):
    """An optional part of ganforge is not installed."""


def require(modules: str, extra: str, needed_for: str, alternative: str = "") -> None:
    """Stop with one line naming the pip extra when any of `modules` (comma-separated) is not installed."""
    if not all(installed(m) for m in modules.split(",")):
        raise MissingExtra(f"{needed_for} needs the [{extra}] extra: pip install 'ganforge[{extra}]' "
                           f"(from a clone: pip install -e '.[{extra}]'){alternative}")


def installed(module: str) -> bool:
    """Whether a module can be found, without importing it (a broken install counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_memory() -> int | None:
    """Bytes of memory the system can still give (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(nbytes: float, what: str, lower: str) -> None:
    """Refuse an allocation that cannot fit, before it is tried (the OOM killer gives no message)."""
    available = available_memory()
    if available is not None and nbytes > 0.9 * available:
        raise GanforgeError(f"{what} needs {nbytes / 2**30:.1f} GiB of memory, {available / 2**30:.1f} GiB is "
                            f"available: lower {lower}")


class TrainingError(GanforgeError, RuntimeError):
    """A run that cannot start or continue; the message says why."""
