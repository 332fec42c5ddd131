"""Configuration's room: the schema (``schema.py``: one dataclass tree and its validation; the
checks that need the launch in ``validate.py``), the
parser (``parse.py``: CLI overrides > config file > defaults; it imports the schema, never the
reverse) and the generated ``--help`` (``help.py``). The names most callers need are here."""

from runtime.config.parse import build_config, config_from_dict, parse_overrides
from runtime.config.schema import Config, ConfigError
from runtime.config.validate import validate_for_world

__all__ = ["Config", "ConfigError", "build_config", "config_from_dict", "parse_overrides", "validate_for_world"]
