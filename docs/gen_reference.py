"""Reference pages generated from the code at every `mkdocs build` (the mkdocs-gen-files plugin runs this).

Every CLI verb's help comes from the parser, every config key from the config dataclasses, every model,
layer, data source, map method and index kind from its registry, and the changelog from CHANGELOG.md, so
the reference cannot drift from what the code does.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path

import mkdocs_gen_files

os.environ["COLUMNS"] = "100"  # argparse wraps its help to the terminal's width: one width for every build

ROOT = Path(__file__).resolve().parents[1]


def cell(value: object) -> str:
    """A value as one markdown table cell (pipes escaped, newlines folded)."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def literal(value: object) -> str:
    """A value as a code span in a table cell; one holding a pipe as plain text (a pipe cannot be escaped
    inside a code span)."""
    return cell(value) if "|" in str(value) else f"`{value}`"


def first_line(thing: object) -> str:
    doc = inspect.getdoc(thing) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def cli_page() -> str:
    from attnscope.cli import build_parser

    parser = build_parser()
    verbs = next(action for action in parser._actions if action.dest == "verb").choices
    parts = ["\n## Every verb's options\n", "Printed by the parser itself (`attnscope VERB --help`).\n"]
    for name, verb in verbs.items():
        parts.append(f"\n### attnscope {name}\n\n```text\n{verb.format_help().rstrip()}\n```\n")
    return "".join(parts)


def config_page() -> str:
    from attnscope.engine.config_keys import config_keys

    lines = [
        "# Config keys",
        "",
        "Every key of a run's `config.yaml`, with its type, its default and what it does, read from the config",
        "classes of the code. Set one with `attnscope train --set section.key=value` (the value is read as YAML)",
        "or in a YAML file given to `--config`; the [training guide](../guides/training.md#configs-and-flags)",
        "shows how they combine.",
    ]
    keys = config_keys()
    sections = {key.key: key for key in keys if dataclasses.is_dataclass(key.default)}
    groups: dict[str, list] = {}
    for key in keys:
        if key.key in sections:
            groups.setdefault(key.key, [])
        else:
            groups.setdefault(key.key.rpartition(".")[0], []).append(key)
    for name, members in groups.items():
        title, meaning = (f"`{name}`", sections[name].meaning) if name else ("Top level", "Keys outside the sections.")
        lines += ["", f"## {title}", "", cell(meaning), "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key in members:
            default = "null" if key.default is None else key.default
            lines.append(f"| `{key.key}` | {cell(key.type)} | {literal(default)} | {cell(key.meaning)} |")
    return "\n".join(lines) + "\n"


def registries_page() -> str:
    from attnscope.data.sources.registry import SOURCES
    from attnscope.explain.methods import MAP_METHODS
    from attnscope.layers.registry import attn_options, describe_attn, list_attn
    from attnscope.models import list_models, model_entry, model_summary
    from attnscope.retrieval.index import KINDS

    lines = ["# Models, layers and other registries", "", "Generated from the registries of the code."]
    lines += ["", "## Models", "", "| model | parameters (2 classes) | input | taps | weights | paper | options |"]
    lines.append("|---|---:|---|---:|---|---|---|")
    for name in list_models():
        row = model_summary(name, num_classes=2)
        size = "x".join(str(n) for n in row["input_size"])
        options = ", ".join(model_entry(name).options())
        lines.append(
            f"| `{name}` | {row['params'] / 1e6:.2f}M | {size} | {row['attention_taps']} | {row['pretrained']} "
            f"| {cell(row['paper'])} | {cell(options)} |"
        )
    lines += ["", "## Attention layers", "", "| layer | what it does | options |", "|---|---|---|"]
    for name in list_attn():
        lines.append(f"| `{name}` | {cell(describe_attn(name))} | {cell(', '.join(attn_options(name)))} |")
    lines += ["", "## Data sources", "", "| source | what it reads | options (type) |", "|---|---|---|"]
    for name, source in SOURCES.items():
        options = ", ".join(
            f"`{key}` ({cell(getattr(kind, '__name__', kind))})" for key, kind in source.option_types().items()
        )
        lines.append(f"| `{name}` | {cell(first_line(source.read))} | {options} |")
    lines += ["", "## Map methods", "", "| method | what it computes |", "|---|---|"]
    for name, method in MAP_METHODS.items():
        lines.append(f"| `{name}` | {cell(first_line(method))} |")
    lines += ["", "## Index kinds", "", "| kind | parameters (default) | re-ranked exactly |", "|---|---|---|"]
    for name, kind in KINDS.items():
        params = ", ".join(f"`{key}` ({value})" for key, value in kind.defaults.items()) or "none"
        lines.append(f"| `{name}` | {params} | {'yes' if kind.reranked else 'no'} |")
    return "\n".join(lines) + "\n"


with mkdocs_gen_files.open("reference/cli.md", "a") as page:
    page.write(cli_page())
with mkdocs_gen_files.open("reference/config.md", "w") as page:
    page.write(config_page())
with mkdocs_gen_files.open("reference/registries.md", "w") as page:
    page.write(registries_page())
with mkdocs_gen_files.open("changelog.md", "w") as page:
    page.write((ROOT / "CHANGELOG.md").read_text(encoding="utf-8"))
