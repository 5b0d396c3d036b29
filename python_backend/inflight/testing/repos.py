"""Model-repository edits for tests: knobs the generated templates do not carry."""

from __future__ import annotations

from pathlib import Path


def add_parameter(config: Path, key: str, value: str) -> None:
    """Append a ``parameters`` entry to a config.pbtxt (e.g. the test-only fault knobs)."""
    config.write_text(config.read_text() + f'parameters {{\n  key: "{key}"\n'
                      f'  value: {{ string_value: "{value}" }}\n}}\n')
