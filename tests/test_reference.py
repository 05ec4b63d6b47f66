"""The configuration reference is generated from the classes' signatures, and
docs/configuration.md embeds exactly what the generator prints, so the docs cannot drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddpm_lightning.components.defaults import kind_settings
from ddpm_lightning.config.__main__ import main
from ddpm_lightning.config.defaults import KINDS
from ddpm_lightning.config.location import config_dir
from ddpm_lightning.config.reference import (
    BEGIN,
    END,
    command_keys,
    comments,
    component,
    composed,
    embedded,
    markdown,
    meanings,
    options,
    write_reference,
    yaml_comments,
)
from ddpm_lightning.config.schema import SCHEMAS, spec_for

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
# Keys whose value is a section switched off by null (its keys have their own schema entries).
SECTIONS = {("classifier", "augment")}


def test_the_docs_embed_the_generated_reference():
    assert embedded(PAGE.read_text(encoding="utf-8")) == markdown().strip() + "\n", (
        "docs/configuration.md is stale: python -m ddpm_lightning.config --write "
        "docs/configuration.md"
    )


def test_markdown_prints_the_reference(capsys):
    main(["--markdown"])
    assert capsys.readouterr().out == markdown()


def test_write_replaces_only_what_lies_between_the_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"# Title\n\nBefore.\n\n{BEGIN}\nold tables\n{END}\n\nAfter.\n")
    write_reference(page)
    text = page.read_text()
    assert text.startswith(f"# Title\n\nBefore.\n\n{BEGIN}\n")
    assert text.endswith(f"{END}\n\nAfter.\n")
    assert embedded(text) == markdown().strip() + "\n" and "old tables" not in text


def test_write_refuses_a_page_without_the_markers(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text("# Title\n")
    with pytest.raises(SystemExit):
        main(["--write", str(page)])
    assert "has no <!-- generated" in capsys.readouterr().err and page.read_text() == "# Title\n"


def unexplained() -> set[tuple[str, str, str]]:
    """(group, option's component, key) of every key of a shipped option without a meaning."""
    return {
        (group, component(group, option), key)
        for group in KINDS
        for option in options(group)
        for key in composed(group, option)
        if not meanings(group, component(group, option)).get(key)
    }


def test_every_setting_says_what_it_means_and_allows():
    assert unexplained() == set()
    for group in KINDS:
        for option in options(group):
            assert set(composed(group, option)) <= set(kind_settings(group)), (group, option)


def sample_signature(
    self,
    # The first line of a meaning
    # and its second line.
    width: int = 3,
    undocumented: bool = False,
    # The last argument's meaning.
    depth: int = 1,
) -> None:
    """A docstring."""
    # A comment in the body explains no argument.
    height = 2
    del height


def test_a_meaning_is_the_comment_right_above_its_argument():
    assert comments(sample_signature) == {
        "width": "The first line of a meaning and its second line.",
        "depth": "The last argument's meaning.",
    }


@pytest.mark.parametrize("command", sorted(SCHEMAS))
def test_every_command_key_says_what_it_means_and_allows(command):
    meaning = yaml_comments(config_dir() / f"{command}.yaml")
    keys = command_keys(command)
    assert "task_name" in keys and "verbose" in keys
    assert [key for key in keys if not meaning.get(key)] == []
    assert [
        key for key in keys if spec_for(command, key) is None and (command, key) not in SECTIONS
    ] == []


def test_a_yaml_meaning_is_the_comment_above_its_key_or_after_it(tmp_path):
    path = tmp_path / "command.yaml"
    path.write_text(
        "# A header.\ndefaults:\n  - _self_\n\n# First line\n# and second.\nalpha: 1\n"
        "beta: 2\nsection:\n  # Nested.\n  gamma: 3\n  delta: 4  # Inline.\nepsilon: 5\n"
    )
    assert yaml_comments(path) == {
        "defaults": "A header.",
        "alpha": "First line and second.",
        "section.gamma": "Nested.",
        "section.delta": "Inline.",
    }
