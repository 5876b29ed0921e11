"""Registry values: what is accepted, how it is stored and read back, and the settings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from muxtunnel.cluster import (
    ClaimKey,
    ClaimKind,
    ClusterSettings,
    MemoryStore,
    NodeRecord,
    Owner,
    RedisStore,
    RegistryError,
    default_node_id,
    open_store,
    redact_url,
)

printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=200)
node_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)


@given(node_ids, printable)
def test_an_owner_reads_back_from_its_stored_form(node_id: str, holder: str) -> None:
    owner = Owner(node_id, holder)
    assert Owner.parse(owner.token()) == owner


@given(node_ids, st.floats(0, 4e9, allow_nan=False), printable)
def test_a_node_record_reads_back_and_encodes_alike_every_time(
    node_id: str, started_at: float, incarnation: str
) -> None:
    record = NodeRecord(node_id, "[::1]:7001", started_at, incarnation)
    assert NodeRecord.decode(record.encode()) == record
    assert NodeRecord.decode(record.encode()).encode() == record.encode()


def test_a_node_record_from_a_newer_version_reads_and_garbage_does_not() -> None:
    text = '{"advertise":"h:1","incarnation":"x","node_id":"n","started_at":1,"zone":"eu"}'
    assert NodeRecord.decode(text) == NodeRecord("n", "h:1", 1.0, "x")
    for bad in ("[]", "{}", "not json", '{"node_id":"n"}'):
        with pytest.raises(RegistryError, match="unreadable node record"):
            NodeRecord.decode(bad)


@pytest.mark.parametrize(
    ("node_id", "holder"),
    [("", "s"), ("-a", "s"), ("a b", "s"), ("a" * 65, "s"), ("a", ""), ("a", "s 1"), ("é", "s")],
)
def test_bad_owners_are_refused(node_id: str, holder: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        Owner(node_id, holder)


def test_claim_keys_of_each_kind() -> None:
    assert str(ClaimKey.service("web")) == "service:web"
    assert ClaimKey.http("a.example.com", "/api") == ClaimKey(ClaimKind.HTTP, "a.example.com/api")
    assert ClaimKey.https("a.example.com").kind is ClaimKind.HTTPS
    assert ClaimKey.port("udp", 53) == ClaimKey(ClaimKind.UDP_PORT, "53")
    assert ClaimKey("tcp", "80").kind is ClaimKind.TCP_PORT  # type: ignore[arg-type]
    for build in (
        lambda: ClaimKey.service(""),
        lambda: ClaimKey.service("a b"),
        lambda: ClaimKey.http("a.example.com", "api"),
        lambda: ClaimKey.http("a.example.com/x", "/"),
        lambda: ClaimKey.port("tcp", 0),
        lambda: ClaimKey.port("sctp", 80),
        lambda: ClaimKey.service("x" * 513),
    ):
        with pytest.raises(ValueError):
            build()


@pytest.mark.parametrize("advertise", ["10.0.0.1:7001", "node-1.example.com:1", "[fd00::1]:65535"])
def test_advertise_addresses_that_are_accepted(advertise: str) -> None:
    assert NodeRecord("n", advertise, 0.0, "i").advertise == advertise


@pytest.mark.parametrize("advertise", ["10.0.0.1", "h:0", "h:65536", ":7001", "fd00::1:7001", ""])
def test_advertise_addresses_that_are_refused(advertise: str) -> None:
    with pytest.raises(ValueError, match="advertise"):
        NodeRecord("n", advertise, 0.0, "i")


def test_settings_are_checked_once_and_hide_the_password() -> None:
    settings = ClusterSettings("redis://:hunter2@10.0.0.5:6379/2", "node-1", "10.0.0.1:7001")
    assert "hunter2" not in repr(settings) and "***" in repr(settings)
    assert settings.lease_s == 10.0 and settings.timeout_s == 2.0
    assert ClusterSettings("memory://", "n", "h:1", lease_s=0.9).timeout_s == pytest.approx(0.3)
    for bad in (
        {"url": "http://h:1/0"},
        {"node_id": "bad id"},
        {"advertise": "nowhere"},
        {"lease_s": 0.0},
        {"lease_s": 10**6},
        {"prefix": ""},
        {"max_connections": 0},
    ):
        fields = {"url": "redis://h:1/0", "node_id": "n", "advertise": "h:1", **bad}
        with pytest.raises(ValueError):
            ClusterSettings(**fields)  # type: ignore[arg-type]


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("redis://user:pw@[::1]:6379/0?x=1") == "redis://user:***@[::1]:6379/0?x=1"
    assert redact_url("rediss://h:6380/1") == "rediss://h:6380/1"


def test_open_store_picks_the_store_by_url() -> None:
    assert isinstance(open_store(ClusterSettings("memory://", "n", "h:1")), MemoryStore)
    store = open_store(ClusterSettings("redis://127.0.0.1:1/0", "n", "h:1", prefix="p:"))
    assert isinstance(store, RedisStore) and store.prefix == "p:" and store.timeout_s == 2.0
    with pytest.raises(ValueError, match="names no host"):
        RedisStore.from_url("redis:///0")


def test_the_default_node_id_is_host_and_port() -> None:
    assert default_node_id(7001, "edge-1.example.com") == "edge-1.example.com-7001"
    assert default_node_id(7001, "_weird host!") == "weird-host-7001"
    assert default_node_id(7001, "...") == "node-7001"
    assert len(default_node_id(65535, "h" * 100)) == 64


CLUSTER = Path(__file__).resolve().parents[2] / "muxtunnel" / "cluster"


@pytest.mark.parametrize("path", sorted(CLUSTER.glob("*.py")), ids=lambda p: p.name)
def test_the_cluster_package_imports_only_itself_and_the_logger(path: Path) -> None:
    """It is built beside the server and must not reach into it (the server calls it)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            module = node.module
        elif isinstance(node, ast.Import):
            module = node.names[0].name
        else:
            continue
        if module.startswith("muxtunnel"):
            assert module.startswith("muxtunnel.cluster") or module == "muxtunnel.log", module


# --- server.cluster in the config, and the flags ---


def test_cluster_config_and_flags(tmp_path: Path) -> None:
    from muxtunnel.cli import _load_server
    from muxtunnel.config import ConfigError, load_server_config
    from muxtunnel.flags import build_parser
    from muxtunnel.model import ClusterConfig

    secret = tmp_path / "secret"
    secret.write_text("cluster-secret-0123456789\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        "server:\n  token: tok-0123456789abcdef\n  cluster:\n    url: redis://10.0.0.5:6379/1\n"
        f"    lease_s: 4\n    secret_file: {secret}\n"
    )
    loaded = load_server_config(str(config))
    assert loaded.cluster == ClusterConfig(
        url="redis://10.0.0.5:6379/1", lease_s=4.0, secret="cluster-secret-0123456789"
    )
    args = build_parser().parse_args(
        ["listen", "-c", str(config), "--node-id", "n1", "--advertise", "10.0.0.11:7836"]
    )
    flagged = _load_server(args).cluster
    assert flagged is not None
    assert (flagged.url, flagged.node_id, flagged.advertise, flagged.lease_s) == (
        "redis://10.0.0.5:6379/1",
        "n1",
        "10.0.0.11:7836",
        4.0,
    )
    short = tmp_path / "s.yaml"
    short.write_text("server:\n  token: tok-0123456789abcdef\n  cluster: redis://r:6379/0\n")
    args = build_parser().parse_args(["listen", "-c", str(short), "--node-id", "n2"])
    assert _load_server(args).cluster == ClusterConfig(url="redis://r:6379/0", node_id="n2")
    bad = tmp_path / "b.yaml"
    bad.write_text("server:\n  token: tok-0123456789abcdef\n  cluster:\n    node_id: x\n")
    with pytest.raises(ConfigError, match="needs its registry"):
        load_server_config(str(bad))


def test_cluster_settings_refuse_a_wildcard_without_advertise() -> None:
    from muxtunnel.model import ClusterConfig, ServerConfig
    from muxtunnel.server._cluster import cluster_settings
    from muxtunnel.server._registry import ClusterError

    cluster = ClusterConfig(url="redis://127.0.0.1:6379/0")
    with pytest.raises(ClusterError, match="--advertise"):
        cluster_settings(ServerConfig(bind_host="0.0.0.0", bind_port=7835), cluster)
    settings = cluster_settings(ServerConfig(bind_host="10.1.2.3", bind_port=7835), cluster)
    assert settings.advertise == "10.1.2.3:7836"
    assert settings.node_id.endswith("-7835")
