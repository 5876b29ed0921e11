"""The interop harness's reports: what a failing run shows of a child's output."""

from __future__ import annotations

from .processes import OUTPUT_LIMIT_CHARS, shorten, without_noise

UPDATE_NOISE = (
    "2026/01/01 00:00:00 [WARN] yamux: frame for missing stream: "
    "Vsn:0 Type:1 Flags:0 StreamID:{} Length:262144\n"
)
ECHO_FAILED = "yamuxpeer: 00:00:00.1 stream 185: echo failed after 983040 bytes: EOF\n"
DATA_FOR_MISSING = (
    "2026/01/01 00:00:00 [WARN] yamux: frame for missing stream: "
    "Vsn:0 Type:0 Flags:4 StreamID:185 Length:65536\n"
)


def test_window_update_warnings_are_counted_not_shown() -> None:
    """Hundreds of harmless Type:1 warnings around the two lines that explain a failure: the
    report keeps those two whole and says how many warnings it left out."""
    log = (
        "yamuxpeer: 00:00:00.0 127.0.0.1:5000: session started\n"
        + "".join(UPDATE_NOISE.format(i) for i in range(1, 400, 2))
        + ECHO_FAILED
        + "".join(UPDATE_NOISE.format(i) for i in range(401, 800, 2))
        + DATA_FOR_MISSING
        + "".join(UPDATE_NOISE.format(i) for i in range(801, 1200, 2))
    )
    assert len(log) > 5 * OUTPUT_LIMIT_CHARS
    report = shorten(log)
    assert ECHO_FAILED in report and DATA_FOR_MISSING in report
    assert "Type:1 Flags" not in report
    assert report.startswith("(600 `frame for missing stream ... Type:1` window-update warnings")


def test_long_output_keeps_its_head_and_tail_in_whole_lines() -> None:
    """Output that is long even without the noise keeps its first and last lines."""
    lines = [f"stream {i}: echo failed after {i} bytes: EOF\n" for i in range(1000)]
    report = shorten("".join(lines))
    assert len(report) <= OUTPUT_LIMIT_CHARS + 100
    assert report.startswith(lines[0]) and report.endswith(lines[-1])
    kept = report.splitlines(keepends=True)
    assert all(line in lines for line in kept if "left out" not in line)
    shown = sum(1 for line in kept if "left out" not in line)
    assert f"... {1000 - shown} lines left out ...\n" in report


def test_quiet_output_is_unchanged() -> None:
    log = "listening 127.0.0.1:4000\n" + ECHO_FAILED
    assert without_noise(log) == log
    assert shorten(log) == log
