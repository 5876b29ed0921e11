"""What a process loads: the terminal's libraries only for a terminal (idle memory)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

from muxtunnel.log import configure_logging, get_logger
from muxtunnel.termlog import rich_traceback


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_a_server_or_client_process_does_not_load_rich() -> None:
    """structlog would import rich (4 MiB of each process) for tracebacks on a terminal."""
    loaded = _loaded_after(
        "import muxtunnel.cli, muxtunnel.server, muxtunnel.client, muxtunnel.log\n"
        "muxtunnel.log.configure_logging('json')"
    )
    assert "structlog" in loaded
    assert not {name for name in loaded if name == "rich" or name.startswith("rich.")}


def test_a_server_or_client_process_loads_cryptography_only_when_used() -> None:
    """cryptography's OpenSSL binding is ~9 MiB of each process: group and private-service
    keys and `muxtunnel cert` load it, a plain tunnel never does."""
    loaded = _loaded_after("import muxtunnel.app, muxtunnel.server, muxtunnel.client")
    assert not {name for name in loaded if name.split(".")[0] == "cryptography"}
    loaded = _loaded_after(
        "from muxtunnel.auth import group_key_pair, verify_group_proof\n"
        "assert not verify_group_proof(group_key_pair('t' * 16)[1], b'x' * 64, 's', 'g', b'', b'')"
    )
    assert "cryptography.hazmat.primitives.asymmetric.ed25519" in loaded


def test_rich_can_still_be_imported_after_structlog() -> None:
    loaded = _loaded_after("import muxtunnel, structlog, rich.console")
    assert "rich.console" in loaded


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_rich_tracebacks_without_locals() -> None:
    out = _Terminal()
    configure_logging("console", stream=out)
    try:
        secret_local = "-".join(["do", "not", "print", "me"])  # a value only a locals dump shows
        raise ValueError(f"boom {len(secret_local)}")
    except ValueError:
        get_logger("test").exception("it failed")
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # without the colours
    assert "it failed" in text and "ValueError: boom 15" in text
    assert "Traceback" in text and "╭" in text  # rich's box, not the plain form
    assert "do-not-print-me" not in text
    configure_logging("json", stream=io.StringIO())


def test_rich_traceback_renders_an_exception() -> None:
    try:
        raise KeyError("missing")
    except KeyError:
        sio = io.StringIO()
        rich_traceback(sio, sys.exc_info())  # type: ignore[arg-type]
    assert "KeyError" in sio.getvalue() and "missing" in sio.getvalue()


def test_yaml_and_zstd_load_only_when_a_file_or_compression_needs_them() -> None:
    """yaml (1 MiB of each process) only for a config file, zstandard only for a compressed
    stream: a tunnel configured on its command line, without compression, loads neither."""
    loaded = _loaded_after(
        "import muxtunnel.cli, muxtunnel.app, muxtunnel.server, muxtunnel.client\n"
        "from muxtunnel.config import load_server_config\n"
        "load_server_config(None, {'bind': '127.0.0.1:7000', 'token': 't' * 32}, env={})"
    )
    assert not {name for name in loaded if name.split(".")[0] in ("yaml", "zstandard", "difflib")}
    loaded = _loaded_after(
        "import tempfile\n"
        "from muxtunnel.config import load_server_config\n"
        "from muxtunnel.compress import stream_memory_bytes\n"
        "with tempfile.NamedTemporaryFile('w', suffix='.yaml', delete=False) as f:\n"
        "    f.write('server:\\n  bind: 127.0.0.1:${PORT}\\n')\n"
        "config = load_server_config(f.name, {'token': 't' * 32}, env={'PORT': '7000'})\n"
        "assert config.bind_port == 7000, config.bind_port\n"
        "stream_memory_bytes(3)"
    )
    assert {"yaml", "zstandard"} <= loaded


def test_a_server_making_its_own_certificate_does_not_keep_cryptography(tmp_path: Path) -> None:
    """The first start makes the self-signed pair in a child process: cryptography's binding
    (11 MiB) would otherwise stay in `listen`'s memory for a pair made once."""
    loaded = _loaded_after(
        "from muxtunnel.model import ServerTls\n"
        "from muxtunnel.trust import load_server_tls\n"
        f"settings = ServerTls(cert={str(tmp_path / 'c.pem')!r}, key={str(tmp_path / 'k.pem')!r},"
        " self_signed=True)\n"
        "context, made = load_server_tls(settings)\n"
        "assert made and context.fingerprint, (made, context)"
    )
    assert not {name for name in loaded if name.split(".")[0] == "cryptography"}
    assert (tmp_path / "k.pem").stat().st_mode & 0o077 == 0
    assert b"BEGIN CERTIFICATE" in (tmp_path / "c.pem").read_bytes()
