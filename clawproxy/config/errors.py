"""The configuration layer's one exception, at the bottom of its imports.

Kept apart so that the YAML reader (``config.yamlfile``) and the loader can both raise it
without either importing the other.
"""

from __future__ import annotations


class ConfigError(Exception):
    """An unusable configuration. ``str()`` is one line that starts with the file (if any)
    and the dotted key; ``key`` holds that key (None for whole-file problems)."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        # Set when the bad value came from ``overrides``, so no file path is blamed.
        self.from_override = False
