"""Write (or check) the README's usage section from the programs' own argument parsers.

    python scripts/readme_usage.py          # rewrite the block in README.md
    python scripts/readme_usage.py --check  # exit 1 if README.md differs (tests run this)

The block sits between the BEGIN and END markers below; everything in it comes from
``pilot.cli.build_parser``, ``server_stub.cli.build_parser`` and ``pilot.config``, so the
README cannot drift from ``--help``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pilot import cli, config  # noqa: E402
from server_stub import cli as stub_cli  # noqa: E402

BEGIN = "<!-- usage: generated from --help by scripts/readme_usage.py; do not edit by hand -->"
END = "<!-- end of generated usage -->"
SERVER_OPTIONS = {"--server", "--url-file", "--proxy", "--token", "--ca-dir", "--ca-file"}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _summary(parser: argparse.ArgumentParser) -> str:
    return parser.description or ""


def _synopsis(
    prog: str, parser: argparse.ArgumentParser, skip: set[str], settings_ok: bool = False
) -> str:
    """``prog ARG [-f FILE] [SETTINGS]`` from a subparser's own actions, wrapped."""
    positionals, options = [], []
    settings = False
    exclusive = {
        id(action): group
        for group in parser._mutually_exclusive_groups
        if group.required
        for action in group._group_actions
    }
    done_groups: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flags = action.option_strings
        if not flags:
            metavar = str(action.metavar or action.dest)
            positionals.append(f"{metavar}..." if action.nargs in ("+", "*") else metavar)
            continue
        long = max(flags, key=len)
        if long in skip:
            continue
        if settings_ok and action.dest in config.FIELDS and long == config.flag_name(action.dest):
            settings = True
            continue
        if id(action) in exclusive:
            group = exclusive[id(action)]
            if id(group) not in done_groups:
                done_groups.add(id(group))
                names = [max(a.option_strings, key=len) for a in group._group_actions]
                options.append("(" + " | ".join(names) + ")")
            continue
        flag = min(flags, key=len) if len(flags) > 1 else long
        takes = action.nargs != 0
        shown = f"{flag} {action.metavar or action.dest.upper()}" if takes else flag
        options.append(shown if action.required else f"[{shown}]")
    words = [prog, *positionals, *options] + (["[SETTINGS]"] if settings else [])
    lines, line = [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > 88:
            lines.append(line)
            line = "        " + word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\n".join(lines)


def usage_block() -> str:
    lines = [BEGIN, "", "```"]
    pilot = cli.build_parser()
    for name, sub in _subcommands(pilot).items():
        lines.append(_synopsis(f"pilot {name}", sub, {"--config"}, settings_ok=True))
        lines.append(f"    {_summary(sub)}")
    lines.append("")
    stub = stub_cli.build_parser()
    for name, sub in _subcommands(stub).items():
        skip = {"--verbose"} if name == "serve" else SERVER_OPTIONS | {"--verbose"}
        lines.append(_synopsis(f"pilot-stub {name}", sub, skip))
        lines.append(f"    {_summary(sub)}")
    lines += [
        "```",
        "",
        "Both programs take `--version`, and `--server URL` before or after the command.",
        "Every `pilot-stub` command but `serve` also takes `--url-file FILE` (the file",
        "`serve --url-file` wrote), `--proxy`, `--token`, `--ca-dir` and `--ca-file`; the",
        "server comes from `--server`, else `--url-file`, else `PILOT_SERVER`, else the file",
        "named by `PILOT_SERVER_FILE`. `SETTINGS` are the configuration flags below; each",
        "subcommand takes the ones that concern it (`pilot COMMAND --help` lists them).",
        "",
        "| setting (TOML key) | flag / environment | default | allowed | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, spec in config.SPECS.items():
        where = []
        if spec.cli:
            where.append(f"`{config.flag_name(name)}`")
        if spec.env:
            where.append(f"`{config.env_name(name)}`")
        table = "TOML table only" if not where else " ".join(where)
        default = config.default_text(name)
        lines.append(f"| `{name}` | {table} | {default} | {spec.allowed()} | {spec.help} |")
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    readme = REPO / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"{readme}: the usage markers are missing", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    wanted = head + usage_block() + tail
    if "--check" in sys.argv[1:]:
        if wanted != text:
            print(
                f"{readme}: usage section out of date; run {Path(__file__).name}", file=sys.stderr
            )
            return 1
        return 0
    readme.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
