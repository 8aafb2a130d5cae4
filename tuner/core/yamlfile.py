"""Reading a YAML file that must hold a mapping, with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_mapping(path: str | Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """The mapping in ``path``; ``error`` (naming the file and ``what`` it should be) otherwise."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise error(f"{path}: {what} file not found.") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: a {what} file must hold a mapping of keys, got {type(data).__name__}.")
    return data
