"""Choosing among several paths (`client._pathscore`) with a fake clock, and reading
`client.paths` from a file and from `--path` (no sockets: the netns tests run real paths)."""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import anyio.abc
import pytest

from muxtunnel.client._pathscore import WINDOW, Chooser, Decision, PathScore
from muxtunnel.config import ConfigError, load_client_config
from muxtunnel.config._paths import parse_path
from muxtunnel.path_config import PathSpec, PathTuning
from muxtunnel.specs import SpecError
from muxtunnel.transport import TransportError, connect

TUNING = PathTuning(switch_after_s=5.0, stall_s=1.5, loss_penalty_s=0.5, margin_s=0.005)


def measured(*rtts_s: float) -> PathScore:
    score = PathScore(TUNING.stall_s, TUNING.loss_penalty_s)
    score.carrier_up()
    for rtt in rtts_s:
        score.answered(rtt)
    return score


def run(
    chooser: Chooser, scores: list[PathScore], start: float, end: float, step: float = 0.1
) -> tuple[float, Decision] | None:
    """`decide` every `step` from `start` to `end`; the first decision and its time."""
    now = start
    while now <= end:
        decision = chooser.decide(now, scores)
        if decision is not None:
            return now, decision
        now = round(now + step, 6)
    return None


# ---------------------------------------------------------------- scores


def test_score_is_the_window_minimum_plus_the_loss_penalty() -> None:
    score = measured(0.030, 0.010, 0.050)
    assert score.score(0.0) == pytest.approx(0.010)
    score.lost()  # 1 of 4 lost
    assert score.loss == pytest.approx(0.25)
    assert score.score(0.0) == pytest.approx(0.010 + 0.5 * 0.25)


def test_the_window_forgets_old_round_trips() -> None:
    score = measured(0.001)
    for _ in range(WINDOW):
        score.answered(0.040)
    assert score.score(0.0) == pytest.approx(0.040)


def test_an_unanswered_probe_stalls_the_path_after_stall_s() -> None:
    score = measured(0.01)
    score.sent(10.0)
    score.sent(10.5)  # the stall clock runs from the first unanswered one
    assert score.alive(11.4)
    assert not score.alive(11.6)
    assert score.score(11.6) is None
    assert "stalled" in score.dead_reason(11.6)
    score.heard()
    assert score.alive(11.6)


def test_a_path_without_a_carrier_is_dead_and_a_new_carrier_starts_afresh() -> None:
    score = measured(0.01)
    score.carrier_down("connection refused")
    assert not score.alive(0.0) and score.dead_reason(0.0) == "connection refused"
    score.carrier_up()
    assert score.alive(0.0) and score.score(0.0) is None  # measured again from scratch


# ---------------------------------------------------------------- the chooser


def test_a_dead_active_path_is_left_at_once_for_the_best_live_one() -> None:
    scores = [measured(0.01), measured(0.03), measured(0.02)]
    chooser = Chooser(TUNING)
    scores[0].carrier_down("carrier reset")
    decision = chooser.decide(0.0, scores)
    assert decision is not None
    assert (decision.to, decision.reason, decision.detail) == (2, "down", "carrier reset")


def test_a_stalled_active_path_is_left_as_soon_as_it_stalls() -> None:
    scores = [measured(0.01), measured(0.03)]
    chooser = Chooser(TUNING)
    scores[0].sent(100.0)
    found = run(chooser, scores, 100.0, 105.0)
    assert found is not None
    at, decision = found
    assert 101.5 < at <= 101.6 and decision.to == 1 and decision.reason == "stalled"


def test_no_live_path_no_decision() -> None:
    scores = [measured(0.01), measured(0.02)]
    for score in scores:
        score.carrier_down("gone")
    assert Chooser(TUNING).decide(0.0, scores) is None


def test_unmeasured_live_paths_come_after_measured_ones() -> None:
    scores = [measured(0.01), PathScore(1.5, 0.5), measured(0.05)]
    scores[1].carrier_up()  # up, no round trip yet
    chooser = Chooser(TUNING)
    scores[0].carrier_down("reset")
    assert chooser.best_live(0.0, scores) == 2


def test_a_better_path_wins_only_after_switch_after_s() -> None:
    scores = [measured(0.050), measured(0.010)]
    chooser = Chooser(TUNING)
    found = run(chooser, scores, 0.0, 20.0)
    assert found is not None
    at, decision = found
    assert at == pytest.approx(5.0) and decision.to == 1 and decision.reason == "better"
    assert "10.0 ms vs 50.0 ms" in decision.detail


def test_a_break_in_being_better_restarts_the_hysteresis() -> None:
    scores = [measured(0.050), measured(0.010)]
    chooser = Chooser(TUNING)
    scores[1].sent(3.0)  # stalls past 4.5: no longer a candidate from then on
    assert run(chooser, scores, 0.0, 6.0) is None
    scores[1].heard()
    found = run(chooser, scores, 6.1, 20.0)
    assert found is not None and found[0] == pytest.approx(11.1)


def test_jitter_within_the_margin_never_moves_the_session() -> None:
    # 20 % of 10 ms is 2 ms: a path 1.5 ms faster is no reason to move.
    scores = [measured(0.0100), measured(0.0085)]
    scores[0] = measured(0.0100)
    tuning = PathTuning(switch_after_s=1.0, margin_s=0.001, margin_ratio=0.2)
    assert run(Chooser(tuning), scores, 0.0, 30.0) is None


def test_loss_makes_a_path_worse() -> None:
    lossy, clean = measured(0.010, 0.010), measured(0.030, 0.030)
    for _ in range(2):
        lossy.lost()  # half the probes lost: + 250 ms
    found = run(Chooser(TUNING), [lossy, clean], 0.0, 10.0)
    assert found is not None and found[1].to == 1 and found[1].reason == "better"


def test_the_first_path_is_taken_back_only_past_the_hysteresis() -> None:
    scores = [measured(0.010), measured(0.010)]
    chooser = Chooser(TUNING)
    scores[0].carrier_down("carrier reset")
    decision = chooser.decide(0.0, scores)
    assert decision is not None and decision.to == 1
    chooser.switched(1)
    assert run(chooser, scores, 0.1, 30.0) is None  # path 0 still down
    scores[0].carrier_up()
    scores[0].answered(0.011)  # back, as good within the margin
    found = run(chooser, scores, 30.0, 60.0)
    assert found is not None
    at, decision = found
    assert at == pytest.approx(35.0) and decision.to == 0 and decision.reason == "preferred"


def test_a_later_path_as_good_is_no_reason_to_move() -> None:
    scores = [measured(0.010), measured(0.010)]
    assert run(Chooser(TUNING), scores, 0.0, 30.0) is None


def test_a_switch_restarts_every_period() -> None:
    scores = [measured(0.050), measured(0.010), measured(0.011)]
    chooser = Chooser(TUNING)
    assert run(chooser, scores, 0.0, 4.9) is None
    chooser.switched(1)
    scores[0] = measured(0.001)  # now path 0 is better than path 1
    found = run(chooser, scores, 5.0, 20.0)
    assert found is not None and found[0] == pytest.approx(10.0) and found[1].to == 0


# ---------------------------------------------------------------- config


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "client.yaml"
    path.write_text(
        "client:\n  server: example.com:7835\n  token: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
        "  tls: false\n  services: [{local: 22}]\n" + text
    )
    return str(path)


def test_paths_from_the_file(tmp_path: Path) -> None:
    config = load_client_config(
        write(
            tmp_path,
            "  switch_after_s: 3\n  path_stall_s: 2\n  paths:\n"
            "    - {name: wifi, bind: 10.0.0.5}\n"
            "    - {name: lte, interface: wwan0, server: '[2001:db8::1]:7836'}\n",
        ),
        {},
    )
    assert config.paths == (
        PathSpec("wifi", bind="10.0.0.5"),
        PathSpec("lte", interface="wwan0", server=("2001:db8::1", 7836)),
    )
    assert config.path_tuning.switch_after_s == 3.0 and config.path_tuning.stall_s == 2.0
    assert load_client_config(write(tmp_path, ""), {}).paths == ()


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        ("    - {name: a, bind: 10.0.0.5}\n", "one path is no choice"),
        ("    - {name: a, bind: 10.0.0.5}\n    - {name: a, bind: 10.0.0.6}\n", "duplicate"),
        ("    - {name: a}\n    - {name: b, bind: 10.0.0.6}\n", "needs 'bind'"),
        ("    - {name: a, bind: eth0}\n    - {name: b, bind: 10.0.0.6}\n", "local IP address"),
        ("    - {bind: 10.0.0.5}\n    - {name: b, bind: 10.0.0.6}\n", "missing required key"),
        (
            "    - {name: a, interface: averyveryverylongname}\n    - {name: b, bind: '::1'}\n",
            "interface name",
        ),
        ("    - {name: a, bind: 10.0.0.5, via: x}\n    - {name: b, bind: '::1'}\n", "via"),
    ],
)
def test_bad_paths_are_refused_with_the_line(tmp_path: Path, paths: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_client_config(write(tmp_path, "  paths:\n" + paths), {})
    assert "client.yaml:" in str(caught.value)


def test_paths_and_several_servers_are_refused(tmp_path: Path) -> None:
    text = "  paths:\n    - {name: a, bind: 10.0.0.5}\n    - {name: b, bind: 10.0.0.6}\n"
    with pytest.raises(ConfigError, match="paths or several servers"):
        load_client_config(write(tmp_path, text), {"servers": ("a:1", "b:2"), "server": "a:1"})


def test_path_flags() -> None:
    assert parse_path("wifi=10.0.0.5") == PathSpec("wifi", bind="10.0.0.5")
    assert parse_path("lte=dev:wwan0@[::1]:9") == PathSpec("lte", interface="wwan0",
                                                          server=("::1", 9))  # fmt: skip
    assert parse_path("v6=@srv.example:7835") == PathSpec("v6", server=("srv.example", 7835))
    for bad in ("wifi", "wifi=", "wifi=10.0.0.5@", "wifi=nonsense", "=10.0.0.5"):
        with pytest.raises(SpecError):
            parse_path(bad)


def test_path_flags_replace_the_file(tmp_path: Path) -> None:
    text = "  paths:\n    - {name: a, bind: 10.0.0.5}\n    - {name: b, bind: 10.0.0.6}\n"
    flags = (parse_path("x=127.0.0.1"), parse_path("y=127.0.0.2"))
    config = load_client_config(write(tmp_path, text), {"paths": flags, "switch_after_s": 1.5})
    assert [p.name for p in config.paths] == ["x", "y"]
    assert config.path_tuning.switch_after_s == 1.5


def test_a_path_left_for_a_better_one_comes_back_only_by_being_better() -> None:
    """A slow first path, idle, looks as good as the second under load: it must not win the
    session back on list order alone (rule 4), only by being better."""
    scores = [measured(0.050), measured(0.010)]
    chooser = Chooser(TUNING)
    found = run(chooser, scores, 0.0, 10.0)
    assert found is not None and found[1].reason == "better"
    chooser.switched(1, "better")
    scores[0] = measured(0.011)  # idle now: as good as path 1 within the margin
    assert run(chooser, scores, 10.0, 40.0) is None
    scores[0] = measured(0.001)  # clearly better: it wins
    found = run(chooser, scores, 40.0, 60.0)
    assert found is not None and found[1] == Decision(0, "better", found[1].detail)
    chooser.switched(0, "better")
    scores[1].carrier_down("gone")
    decision = chooser.decide(60.0, scores)
    assert decision is None  # path 0 active and live: nothing to do


# ---------------------------------------------------------------- connecting through a device


@pytest.mark.anyio
async def test_connect_through_an_interface() -> None:
    """`interface` (SO_BINDTODEVICE, as `client.paths[].interface` uses it): through `lo` a
    loopback listener is reached; through a device that does not exist, a TransportError."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener:
        with anyio.fail_after(10):
            stream = await connect("127.0.0.1", port, interface="lo")
            async with stream:
                raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                bound = raw.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16)
                assert bound.rstrip(b"\0") == b"lo"
            with pytest.raises(TransportError):
                await connect("127.0.0.1", port, interface="mtnosuchdev", timeout_s=2)
