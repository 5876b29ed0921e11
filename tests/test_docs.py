"""What the README, the example config and the deploy files tell a new user holds true."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from muxtunnel.cli import build_parser
from muxtunnel.config import load_client_config, load_server_config
from muxtunnel.model import PortRanges

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def _flags_of(command: str) -> set[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices[command]._option_string_actions)


def test_quick_start_installs_where_debian_lets_it() -> None:
    quick = _section("Quick start")
    commands = [line.split("#")[0].strip() for line in quick.splitlines()]
    assert "pip install ." not in commands  # PEP 668: externally managed on Debian 12
    assert "pipx install ." in commands
    assert "python3 -m venv" in quick


def test_synopsis_lists_each_flag_under_a_command_that_takes_it() -> None:
    synopsis = _section("Command line").split("```")[1]
    blocks: dict[str, str] = {}
    current = ""
    for line in synopsis.strip().splitlines():
        head = re.match(r"(muxtunnel (\w+)|common:)", line)
        if head:
            current = head[2] or "common"
        blocks[current] = blocks.get(current, "") + line + "\n"
    for command in ("listen", "up", "status", "cert"):
        takes = _flags_of(command)
        listed = set(re.findall(r"--[a-z][a-z-]*", blocks[command]))
        assert listed <= takes, (command, listed - takes)
    for flag in re.findall(r"--[a-z][a-z-]*", blocks["common"]):
        assert flag in _flags_of("listen") and flag in _flags_of("up"), flag


def test_systemd_units_say_how_their_binary_gets_there() -> None:
    for unit in ("muxtunnel-listen.service", "muxtunnel-up.service"):
        text = (ROOT / "deploy" / unit).read_text(encoding="utf-8")
        assert "ExecStart=/usr/local/bin/muxtunnel " in text
        assert "ln -s /opt/muxtunnel/bin/muxtunnel /usr/local/bin/" in text, unit
    deployment = README[README.index("### Deployment") :]
    assert "/usr/local/bin/muxtunnel" in deployment
    assert "python3 -m venv /opt/muxtunnel" in deployment


def test_the_container_publishes_the_example_configs_ports() -> None:
    env = {"MUXTUNNEL_TOKEN": "example-token-0123456789", "MUXTUNNEL_VISITOR_TOKEN": "v" * 16}
    example = str(ROOT / "config.example.yaml")
    allowed = load_server_config(example, env=env).allow_ports
    load_client_config(example, env=env)
    containerfile = (ROOT / "deploy" / "Containerfile").read_text(encoding="utf-8")
    published = re.findall(r"-p (\d+)-(\d+):\1-\2(?!/udp)", containerfile)
    assert PortRanges(tuple((int(a), int(b)) for a, b in published)) == allowed, published
