"""The project's error type, kept free of heavy imports so the command line can catch it cheaply.

A `GanforgeError` is a mistake the user can fix (a bad option, file or dataset): the command line
prints its message as one line. Any other exception is a fault and keeps its traceback.
"""

from __future__ import annotations

import importlib.util


class GanforgeError(Exception):
    """A problem the message fully explains (it names the file or option at fault)."""


class MissingExtra(GanforgeError):
    """An optional part of ganforge is not installed."""


def require(modules: str, extra: str, needed_for: str, alternative: str = "") -> None:
    """Stop with one line naming the pip extra when any of `modules` (comma-separated) is not installed."""
    if any(importlib.util.find_spec(m) is None for m in modules.split(",")):
        raise MissingExtra(f"{needed_for} needs the [{extra}] extra: pip install 'ganforge[{extra}]' "
                           f"(from a clone: pip install -e '.[{extra}]'){alternative}")
