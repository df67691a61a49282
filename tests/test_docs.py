"""The documentation names what the code has: every spec key, every CLI command."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from hcli.spec import Spec

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = Path(__file__).resolve().parents[1] / "README.md"


def _keys(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _keys(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_every_spec_key_is_documented():
    text = (DOCS / "specs.md").read_text()
    missing = [k for k in _keys(Spec) if f"`{k}`" not in text]
    assert not missing, f"document these keys in docs/specs.md: {missing}"


def test_readme_opens_with_the_two_commands():
    head = README.read_text().splitlines()[:6]
    assert any(line.startswith("make demo") for line in head)
    assert any(line.startswith("make test") for line in head)


def test_readme_lists_every_command():
    from hcli.cli import app

    text = README.read_text()
    names = [c.name for c in app.registered_commands] + [g.name for g in app.registered_groups]
    missing = [n for n in names if f"hcli {n}" not in text]
    assert not missing, missing
