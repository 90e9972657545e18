"""Progress of long runs: a tqdm bar on a terminal, one closing line where stderr is a file."""

from __future__ import annotations

import io

from l4_sglang.bench.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_that_closes_at_the_total(monkeypatch):
    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    bar = Progress("l4 rate 2", interval_s=0)
    for done in range(1, 11):
        bar.update(done, 10, in_flight=10 - done)
    bar.update(10, 10)  # after the close: nothing more
    text = err.getvalue()
    assert "\r" in text and "[l4 rate 2]" in text and "10/10" in text and "in_flight=0" in text
    assert text.endswith("\n") and text.count("\n") == 1


def test_a_file_gets_one_line_at_the_end(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    bar = Progress("l4 rate 2", word="done")
    for done in range(1, 21):
        bar.update(done, 20, in_flight=20 - done)
        if done < 20:
            assert err.getvalue() == ""
    assert err.getvalue().startswith("[l4 rate 2] 20/20 done, 0 in flight, ")
    assert err.getvalue().count("\n") == 1
