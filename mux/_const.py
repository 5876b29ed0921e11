"""Wire facts of the yamux protocol (hashicorp/yamux spec.md), in one place.

Header, 12 bytes, big endian: version u8, type u8, flags u16, stream id u32, length u32.
"""

from __future__ import annotations

import enum
import struct

PROTOCOL_VERSION = 0
HEADER = struct.Struct(">BBHII")
HEADER_SIZE = HEADER.size  # 12

#: Every stream starts with this much credit in each direction (spec: 256 KiB).
INITIAL_STREAM_WINDOW = 256 * 1024
#: Largest window we accept the peer granting us (HTTP/2's cap, leaves headroom in 32 bits).
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**32 - 1
#: Largest replay budget of a resumable session: every unconfirmed span stays far below 2^31,
#: so a 32-bit Receipt always names one count (`_replay.py`, invariant 3).
MAX_REPLAY_BUDGET_BYTES = 2**30


class FrameType(enum.IntEnum):
    DATA = 0
    WINDOW_UPDATE = 1
    PING = 2
    GO_AWAY = 3
    #: Ours, not yamux's: "I have received N of your bytes" (length: N mod 2^32). Only ever
    #: sent once both sides agreed to resumable sessions (see `_replay.py`).
    RECEIPT = 4


class Flag(enum.IntFlag):
    NONE = 0
    SYN = 1
    ACK = 2
    FIN = 4
    RST = 8


class GoAwayCode(enum.IntEnum):
    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
