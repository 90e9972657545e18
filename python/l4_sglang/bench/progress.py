"""Progress of a long run on stderr: a tqdm bar on a terminal, one closing line elsewhere.

A bar redrawn with carriage returns is noise in a log file or a CI capture, so where stderr is no
terminal the run writes only its last count (`[label] done/total <word>`) when it completes.
Callers pass `--quiet` by handing out no callback at all.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """Counts requests up to a total that the first `update` gives; the bar opens then and closes
    at the total. `word` follows the count in the closing line."""

    def __init__(self, label: str, word: str = "requests", interval_s: float = 0.5) -> None:
        self.label, self.word, self.interval_s = label, word, interval_s
        self._bar: tqdm | None = None
        self._t0 = time.monotonic()
        self._closed = False

    def update(self, done: int, total: int, **postfix: object) -> None:
        if self._closed:
            return
        if not sys.stderr.isatty():
            if done >= total:
                self._closed = True
                extra = "".join(f", {v} {k.replace('_', ' ')}" for k, v in postfix.items())
                elapsed = time.monotonic() - self._t0
                sys.stderr.write(f"[{self.label}] {done}/{total} {self.word}{extra}, {elapsed:.0f} s\n")
                sys.stderr.flush()
            return
        bar = self._bar
        if bar is None:
            bar = self._bar = tqdm(
                total=total, desc=f"[{self.label}]", unit="req", file=sys.stderr,
                mininterval=self.interval_s, dynamic_ncols=True, leave=True,
            )  # fmt: skip
        if postfix:
            bar.set_postfix(postfix, refresh=False)
        bar.update(done - bar.n)
        if done >= total:
            self._closed = True
            bar.close()
