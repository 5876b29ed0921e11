"""Fuzzing the config loader: whatever a file holds, only `ConfigError` escapes.

Two generators: YAML-ish text (random lines of keys, indentation, flow collections, anchors,
tags, `${VAR}` substitutions, bad UTF-8) and random structures built from the loader's own key
vocabulary (so most examples get past "unknown key" into the value checks), dumped as YAML.
`include:` is left out: it reads other files, which is tested on its own in test_config.py.

The frame decoder and the control-message decoder have their garbage-in properties where they
live: `tests/mux/test_core_properties.py` (random bytes and random frames into the core) and
`tests/test_control.py` (random bytes, bodies and structures into the decoders).
"""

from __future__ import annotations

import dataclasses
import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mux import MuxConfig
from muxtunnel.config import ConfigError, load_client_config, load_server_config

pytestmark = pytest.mark.stress


def loader_keys(section: str) -> tuple[str, ...]:
    """The keys the loader accepts in `section`, as its own "unknown key" error lists them: the
    vocabulary comes through the public API, and if that message changes this fails loudly
    (never a silent fallback to a handful of keys)."""
    load = load_server_config if section == "server" else load_client_config
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(f"{section}:\n  not-a-key:\n", encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            load(path, env={})
    _, found, listed = str(info.value).partition("expected one of: ")
    keys = tuple(listed.split(", "))
    if not found or len(keys) < 5:
        raise AssertionError(f"cannot read the {section} keys from: {info.value}")
    return keys


SERVER_KEYS = loader_keys("server")
CLIENT_KEYS = loader_keys("client")
MUX_KEYS = tuple(f.name for f in dataclasses.fields(MuxConfig))
SERVICE_KEYS = ("name", "type", "local", "remote_port", "token", "compression")
KEYS = tuple(k for k in {*SERVER_KEYS, *CLIENT_KEYS, *MUX_KEYS, *SERVICE_KEYS} if k != "include")
ENV = {"PORT": "8080", "EMPTY": "", "TOKEN": "fuzz-token-0123456789", "WORDS": "a b: c"}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load_both(path: Path) -> None:
    """Load `path` for both roles; only ConfigError may escape."""
    for load in (load_server_config, load_client_config):
        try:
            load(path, env=ENV)
        except ConfigError as exc:
            message = str(exc)
            assert message and "\n" not in message, repr(message)
            assert "fuzz-token-0123456789" not in message  # tokens never appear


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        ["${PORT}", "${EMPTY}", "${MISSING}", "${MISSING:-7}", "$${x}", "${", "16MiB", "1 GiB",
         "10.99.0.1:80", "[::1]:0", "tcp", "udp", "zstd", "1024-65535,8080", "0-99999", "-1"]
    ),
)  # fmt: skip
# Keys without line breaks: a key holding one breaks the one-line message (a known bug, see
# test_a_key_with_a_line_break_still_gives_one_line below).
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
keys = st.one_of(
    st.sampled_from(KEYS),
    st.text(max_size=8).filter(lambda key: not any(c in key for c in LINE_BREAKS)),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=25,
)
sections = st.dictionaries(st.sampled_from(["server", "client", "other"]), values, max_size=3)


@SETTINGS
@given(document=sections)
def test_random_structures_only_raise_config_error(tmp_path_factory, document: Any) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    load_both(path)


yaml_tokens = st.sampled_from(
    ["server:", "client:", "mux:", "services:", "- ", "  ", "    ", "\n", ": ", "{", "}", "[",
     "]", ", ", "&a ", "*a", "<<: *a", "!!str ", "!!int ", "!!binary ", "!custom ", "? ", "|",
     ">", "'", '"', "#", "${PORT}", "${", "}", "\t", "---", "...", "%YAML 1.1", "~", "null",
     *(f"{k}: " for k in KEYS)]
)  # fmt: skip
texts = st.lists(
    st.one_of(yaml_tokens, st.text(alphabet=string.printable, max_size=6)), max_size=60
).map("".join)


@SETTINGS
@given(text=texts)
def test_yaml_ish_text_only_raises_config_error(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_text(text, encoding="utf-8")
    load_both(path)


@SETTINGS
@given(raw=st.binary(max_size=200))
def test_raw_bytes_only_raise_config_error(tmp_path_factory, raw: bytes) -> None:
    """Not UTF-8, NUL bytes, BOMs: still a one-line ConfigError (or a valid file)."""
    if b"include" in raw:
        return
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_bytes(raw)
    load_both(path)


def test_a_key_with_a_line_break_still_gives_one_line(tmp_path: Path) -> None:
    """A key holding a line break used to give a two-line ConfigError (the key path quoted it
    as it was), so a file could forge a log line; ConfigError escapes it now."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"server": {"\nserver.token: forged": 1}}), encoding="utf-8")
    load_both(path)
    with pytest.raises(ConfigError, match=r"\\nserver.token: forged"):
        load_server_config(path, env=ENV)
