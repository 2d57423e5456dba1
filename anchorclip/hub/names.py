"""How a model card and the upload folder name models and datasets: Hub ids as they are, local paths by name.

Local paths never reach a card or the upload folder: a local base model is named by the Hub id its config
records, else by its folder's name (`public_name`).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, TypeGuard

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(name: object) -> TypeGuard[str]:
    """A `namespace/name` string that is not a local path (only such ids belong in `base_model`/`datasets`)."""
    return isinstance(name, str) and bool(_REPO_ID.match(name)) and not os.path.exists(name)


def public_name(name: Any) -> Any:
    """How a card names a model or dataset: a Hub id as is; a local folder by the Hub id that its config.json
    records (`_name_or_path`) or that its Hub-cache path holds (`models--org--name/snapshots/<rev>`), else by
    the folder's base name -- never by the training machine's path."""
    if not isinstance(name, (str, os.PathLike)) or not os.fspath(name):
        return name
    name = os.fspath(name)
    if not (os.path.isabs(name) or os.path.exists(name)):
        return name  # a Hub id, or a spec such as "miniworld:finetune"
    path = os.path.normpath(name)
    parts = path.split(os.sep)
    for part, child in zip(parts, parts[1:]):
        if part.startswith(("models--", "datasets--")) and child == "snapshots":
            return part.split("--", 1)[1].replace("--", "/")
    recorded = None
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        try:
            with open(config) as handle:
                recorded = json.load(handle).get("_name_or_path")
        except (OSError, ValueError):
            pass
    return recorded if is_hub_id(recorded) else os.path.basename(path)


def public_values(value: Any) -> Any:
    """`value` (results, arguments) with every absolute path, alone or after "=" (`NAME@GROUP=PATH`), replaced
    by its `public_name`."""
    if isinstance(value, dict):
        return {key: public_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [public_values(item) for item in value]
    if isinstance(value, str):
        head, equals, path = value.rpartition("=")
        if os.path.isabs(path):
            return head + equals + public_name(path)
    return value
