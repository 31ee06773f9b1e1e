"""Safe YAML in and out, shared by the native format and agent2model files."""

from __future__ import annotations

from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    """Safe dumper that double-quotes strings holding characters YAML would otherwise read back
    differently (NEL and the Unicode line/paragraph separators are line breaks to a YAML reader)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if any(c in value for c in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


class InlineList(list):  # type: ignore[type-arg]
    """A list of scalars written on one line (`[a, b, c]`), as agent2model's own files write pools."""


def _represent_inline(dumper: yaml.SafeDumper, value: InlineList) -> yaml.SequenceNode:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", list(value), flow_style=True)


_Dumper.add_representer(InlineList, _represent_inline)


def dump_yaml(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


class NoAliasLoader(yaml.SafeLoader):
    """Safe loader that refuses anchors/aliases: flows never need them and they enable alias bombs."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in flow files; write the value out", event.start_mark
            )
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """Parse YAML with the safe, alias-free loader (raises yaml.YAMLError / RecursionError)."""
    return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 - safe loader subclass
