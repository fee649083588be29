"""Reading the YAML config file: strict (duplicate keys are errors) and safe (no objects).

Kept apart from ``config.loading`` so that PyYAML is imported only when there is a file to read.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml

from clawproxy.config.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key written twice in one mapping: PyYAML would silently
    keep the last one, and a second ``port:`` further down is a classic config bug."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def read_yaml(path: str) -> object:
    """The parsed YAML document at ``path``; ConfigError (one line, with the path) otherwise."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # A SafeLoader: builds no Python objects.
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{path}: invalid YAML{where}: {_one_line(exc.problem or str(exc))}"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {_one_line(str(exc))}") from None
