"""Scoring the paths to a server and choosing one, with hysteresis (pure: no sockets, no
clock; times are passed in, so the rules are tested with a fake clock).

Each path is measured by round trips: `resume.Probe`s on a standby carrier, mux pings on the
active session's. Its score, in seconds (lower is better), is

    score = min RTT of the last `WINDOW` answers + loss_penalty_s * loss

with `loss` the share of the last `WINDOW` probes not answered within their timeout (MPUDP
scores its links by heartbeat RTT and loss the same way). The minimum, not a smoothed mean:
the active carrier's pings queue behind the session's own bulk data while an idle standby's
do not, and a path must not look worse merely for being used; the minimum over a few seconds
filters that queueing out (BBR's min_rtt does the same), while a slower route raises it. The
smoothed RTT (RFC 6298's alpha = 1/8) is kept for display.

Rules (`Chooser.decide`):
1. A path with no carrier, or with a probe unanswered for `stall_s`, is dead: it has no score.
2. The active path dead: switch at once to the best live path (lowest score; unscored live
   paths after scored ones; then list order). No live path: nothing to decide here (the
   caller connects anew).
3. The active path live: a candidate qualifies while it is *better* (its score lower than the
   active's by more than the margin, `max(margin_s, margin_ratio * active score)`) or
   *preferred* (earlier in the list, and not worse by more than the margin: the first path
   is back). It must qualify without a break for `switch_after_s` before the session moves.
4. A path the session left for a better one (not because it died) is no longer preferred: it
   comes back only by being better. Else a slow first path would win back the session each
   time it is idle (an idle path shows no queueing) and lose it again under the session's
   load, every `switch_after_s`. It is preferred again once the session ran on it again.
5. Every switch starts the qualifying periods afresh.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from muxtunnel.path_config import PathTuning

__all__ = ["WINDOW", "Chooser", "Decision", "PathScore"]

#: Probes a score remembers: at the default 0.25 s apart, the last few seconds.
WINDOW = 16
#: RFC 6298's gain for the smoothed RTT.
_ALPHA = 0.125


class PathScore:
    """What the probes of one path found: answers, losses, and whether it is waiting."""

    def __init__(self, stall_s: float, loss_penalty_s: float) -> None:
        self.stall_s = stall_s
        self.loss_penalty_s = loss_penalty_s
        self._rtts: deque[float] = deque(maxlen=WINDOW)
        self._answered: deque[bool] = deque(maxlen=WINDOW)
        #: The path has a carrier now (a standby attached, or the session's own).
        self.up = False
        #: Why it has none (None: it has one, or never tried).
        self.down_reason: str | None = None
        self.srtt_s: float | None = None
        #: When the oldest probe not answered yet was sent (None: nothing outstanding).
        self._waiting_since: float | None = None

    def carrier_up(self) -> None:
        """A fresh carrier: the old one's measurements say nothing of it."""
        self.up, self.down_reason, self._waiting_since = True, None, None
        self._rtts.clear()
        self._answered.clear()
        self.srtt_s = None

    def carrier_kept(self) -> None:
        """The session took this path's carrier: still up, measurements kept, nothing waited
        for (its pings start now)."""
        self.up, self.down_reason, self._waiting_since = True, None, None

    def carrier_down(self, reason: str) -> None:
        self.up, self.down_reason, self._waiting_since = False, reason, None

    def sent(self, now: float) -> None:
        """A probe left at `now`."""
        if self._waiting_since is None:
            self._waiting_since = now

    def answered(self, rtt_s: float) -> None:
        self._rtts.append(rtt_s)
        self._answered.append(True)
        self._waiting_since = None
        self.srtt_s = rtt_s if self.srtt_s is None else self.srtt_s + _ALPHA * (rtt_s - self.srtt_s)

    def heard(self) -> None:
        """An answer came, too late to count (`lost` counted it): the path is not stalled."""
        self._waiting_since = None

    def lost(self) -> None:
        """A probe got no answer within its timeout (it may still come: the stall clock runs
        on from the first unanswered probe)."""
        self._answered.append(False)

    @property
    def loss(self) -> float:
        """Unanswered share of the last probes, 0..1."""
        if not self._answered:
            return 0.0
        return self._answered.count(False) / len(self._answered)

    def stalled(self, now: float) -> bool:
        return self._waiting_since is not None and now - self._waiting_since > self.stall_s

    def alive(self, now: float) -> bool:
        return self.up and not self.stalled(now)

    def score(self, now: float) -> float | None:
        """Lower is better; None: dead, or not measured yet."""
        if not self.alive(now) or not self._rtts:
            return None
        return min(self._rtts) + self.loss_penalty_s * self.loss

    def dead_reason(self, now: float) -> str:
        """Why `alive` is False, for the log."""
        if not self.up:
            return self.down_reason or "no carrier"
        return f"stalled (no answer for {self.stall_s:g} s)"


@dataclass(frozen=True, slots=True)
class Decision:
    """Move the session to path `to`; `reason` is for the log and the metrics' label."""

    to: int
    #: "down" or "stalled" (the active path died), "better" or "preferred" (rule 3).
    reason: str
    detail: str


class Chooser:
    """Which path the session should run on (the module's rules)."""

    def __init__(self, tuning: PathTuning, active: int = 0) -> None:
        self.tuning = tuning
        self.active = active
        #: Since when each candidate has qualified without a break (rule 3).
        self._since: dict[int, float] = {}
        #: Paths left for a better one (rule 4).
        self._demoted: set[int] = set()

    def switched(self, to: int, reason: str = "") -> None:
        """The session runs on path `to` now, moved for `reason` (rules 4 and 5)."""
        if reason in ("better", "preferred") and to != self.active:
            self._demoted.add(self.active)
        self._demoted.discard(to)
        self.active = to
        self._since.clear()

    def best_live(self, now: float, scores: list[PathScore], exclude: int = -1) -> int | None:
        """The live path to run on (rule 2's order), if any."""
        live = [i for i, score in enumerate(scores) if i != exclude and score.alive(now)]
        if not live:
            return None

        def key(i: int) -> tuple[int, float, int]:
            value = scores[i].score(now)
            return (value is None, value or 0.0, i)

        return min(live, key=key)

    def decide(self, now: float, scores: list[PathScore]) -> Decision | None:
        """The switch to make now, if any."""
        active = scores[self.active]
        if not active.alive(now):
            to = self.best_live(now, scores, exclude=self.active)
            if to is None:
                return None
            reason = "down" if not active.up else "stalled"
            return Decision(to, reason, active.dead_reason(now))
        mine = active.score(now)
        if mine is None:
            self._since.clear()
            return None
        margin = max(self.tuning.margin_s, self.tuning.margin_ratio * mine)
        qualified: dict[int, str] = {}
        for i, path in enumerate(scores):
            theirs = path.score(now)
            if i == self.active or theirs is None:
                continue
            if theirs < mine - margin:
                qualified[i] = "better"
            elif i < self.active and theirs <= mine + margin and i not in self._demoted:
                qualified[i] = "preferred"
        self._since = {i: self._since.get(i, now) for i in qualified}
        ripe = [i for i in qualified if now - self._since[i] >= self.tuning.switch_after_s]
        if not ripe:
            return None
        to = min(ripe, key=lambda i: (scores[i].score(now) or 0.0, i))
        theirs = scores[to].score(now) or 0.0
        detail = (
            f"score {theirs * 1000:.1f} ms vs {mine * 1000:.1f} ms "
            f"for {self.tuning.switch_after_s:g} s"
        )
        return Decision(to, qualified[to], detail)
