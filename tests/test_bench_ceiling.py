"""Tests of `bench.ceiling`'s arithmetic and of its reading of `openssl speed` (fast)."""

from __future__ import annotations

import shutil

from testenv import skip_or_fail

from bench import ceiling


def _fig(total: float, gbit_s: float = 1.0) -> dict[str, float]:
    return {"listen_s_per_gib": total / 2, "up_s_per_gib": total / 2, "s_per_gib": total,
            "gbit_s": gbit_s}  # fmt: skip


def test_the_ceiling_adds_two_cipher_passes_per_hop_to_the_plaintext_twin() -> None:
    runs = [{"plain": _fig(1.5), "tls": _fig(2.5), "visit-plain": _fig(3.0), "visit": _fig(4.0)}]
    lines = ceiling.report(runs, {"aes-256-gcm": 0.25})
    rows = {line.split()[0]: line.split() for line in lines[3:7]}
    # tls: one hop, 2 passes of 0.25: 1.5 / (1.5 + 0.5) = 0.75x; measured 1.5 / 2.5 = 0.60x;
    # beyond: 2.5 - 1.5 - 0.5 = 0.50 CPU s per GiB.
    assert rows["tls"][3:7] == ["0.50", "0.75x", "0.60x", "0.50"]
    # visit: two hops, 4 passes: 3.0 / 4.0 = 0.75x, measured 0.75x, nothing beyond.
    assert rows["visit"][3:7] == ["1.00", "0.75x", "0.75x", "0.00"]
    assert rows["plain"][3] == "0.00" and "x" not in " ".join(rows["plain"][4:])


def test_medians_over_rounds() -> None:
    runs = [{"plain": _fig(t)} for t in (1.0, 3.0, 2.0)]
    lines = ceiling.report(runs, {})
    row = next(line for line in lines if line.startswith("plain"))
    assert row.split()[2] == "2.00"


def test_the_cipher_cost_is_read_from_openssl_speed() -> None:
    if shutil.which("openssl") is None:
        skip_or_fail("no openssl command")
    s_per_gib = ceiling.cipher_s_per_gib("aes-256-gcm", seconds=1)
    assert 0.01 < s_per_gib < 20  # CPU s per GiB: AES-GCM runs at 0.05-100 GB/s anywhere


def test_visit_is_bounded_against_ssh_l_by_its_plaintext_twin_and_four_passes() -> None:
    runs = [{"visit-plain": _fig(3.0), "visit": _fig(4.5), "sshl": _fig(3.6)}]
    _, rows = ceiling.table(runs, {"aes-256-gcm": 0.25, "chacha20-poly1305": 0.3})
    row = next(r for r in rows if r[0] == "visit vs sshl")
    # floor 3.0 + 4 * 0.25 = 4.0; ssh -L 3.6 / 4.0 = 0.90x at best; measured 3.6 / 4.5 = 0.80x
    assert row[2] == "4.00" and row[4] == "0.90x" and row[5] == "0.80x"
