"""Progress lines for logs: where stderr is not a terminal (nohup, a batch scheduler) tqdm bars
vanish, so long commands print one line per finished item instead, with the rate and the ETA."""
from __future__ import annotations

import sys
import time


LINE_EVERY_SECONDS = 5.0   # at most one line per this many seconds, besides the first and the last item


class LogLines:
    """``label: 3/20 patients, 1.2 s/patient, ETA 0.3 min`` on stderr after a `step`, only when
    ``enabled`` and stderr is not a terminal (a terminal has the bar): for the first and the last item,
    and in between at most every LINE_EVERY_SECONDS."""

    def __init__(self, label: str, total: int, unit: str, done: int = 0, enabled: bool = True):
        self.label, self.total, self.unit, self.done = label, total, unit, done
        self.enabled = enabled and not sys.stderr.isatty()
        self.started, self.steps, self.last_line = time.monotonic(), 0, -float("inf")

    def step(self, detail: str = "") -> None:
        """One more item finished; ``detail`` follows the count (e.g. ", RUN done in 3.0 s")."""
        self.done += 1
        self.steps += 1
        now = time.monotonic()
        if not self.enabled or (self.steps > 1 and self.done < self.total and now - self.last_line < LINE_EVERY_SECONDS):
            return
        self.last_line = now
        per_item = (now - self.started) / self.steps
        print(f"{self.label}: {self.done}/{self.total} {self.unit}s{detail}, {per_item:.1f} s/{self.unit}, ETA "
              f"{per_item * max(self.total - self.done, 0) / 60:.1f} min", file=sys.stderr, flush=True)
