"""libFuzzer target for the frame decoder (atheris). Not part of any test run.

The same contract as the hypothesis properties in tests/mux/test_core_properties.py, with
coverage guidance: peer bytes, in any chunking, yield events or `RemoteProtocolError` and
nothing else; after the error the core has queued a GoAway and takes no more input; whatever
the core writes parses back as whole frames.

    pip install atheris
    python tests/fuzz/atheris_frames.py -max_total_time=300 -rss_limit_mb=1024 [CORPUS_DIR]
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-not-found]

with atheris.instrument_imports():
    from mux import Connection, FrameType, MuxConfig, RemoteProtocolError
    from mux.testing import parse_frames

#: Small limits so short inputs reach them (backlog, streams, reply budget, glitches).
CONFIG = MuxConfig(max_queued_pongs=2, accept_backlog=3, max_streams=4, glitch_burst=20)


def written(conn: Connection) -> bytes:
    return b"".join(bytes(b) for b in conn.data_to_send(1 << 20))


def TestOneInput(data: bytes) -> None:  # libFuzzer convention for the name
    fdp = atheris.FuzzedDataProvider(data)
    conn = Connection(client=fdp.ConsumeBool(), config=CONFIG)
    now = 0.0
    try:
        while fdp.remaining_bytes():
            chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64))
            now += fdp.ConsumeIntInRange(0, 3) / 10
            conn.receive_data(chunk, now)
            for _ in range(64):  # a paused core resumes once its replies are written
                if not conn.reading_paused:
                    break
                parse_frames(written(conn))
                conn.receive_data(b"", now)
            parse_frames(written(conn))
    except RemoteProtocolError as exc:
        frames = parse_frames(written(conn))
        assert frames and frames[-1].type == FrameType.GO_AWAY
        assert frames[-1].length == exc.go_away_code
        assert conn.receive_data(b"\0" * 12, now) == []
        assert conn.stream_count == 0


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
