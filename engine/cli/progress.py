"""One live progress line on stderr for stages that report a fraction done (evaluation, results runs).

On a terminal it redraws in place with the elapsed time, the rate and an ETA; in a log (not a tty) it
writes a full line at most every `every_s` seconds, so a long run shows that it is alive without
flooding the file.
"""

from __future__ import annotations

import sys
import time

import click


class FractionLine:
    """`line(fraction, message)`: fraction in [0, 1]; `close()` ends the live line."""

    def __init__(self, label: str, every_s: float = 30.0, enabled: bool = True):
        self.label, self.every_s, self.enabled = label, every_s, enabled
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.last = -1e9
        self.shown = False

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < (0.2 if self.tty else self.every_s) and fraction < 1):
            return
        self.last = now
        click.echo(("\r" if self.tty else "") + self.text(fraction, message, now - self.started),
                   err=True, nl=not self.tty)
        self.shown = True

    def text(self, fraction: float, message: str, elapsed: float) -> str:
        fraction = min(max(fraction, 0.0), 1.0)
        width = 20
        bar = "#" * int(width * fraction) + "." * (width - int(width * fraction))
        eta = f"ETA {elapsed / fraction * (1 - fraction):4.0f}s" if fraction > 0 else "ETA    ?"
        rate = f"{fraction * 100 / max(elapsed, 1e-9) * 60:5.1f}%/min"
        return f"{self.label} [{bar}] {fraction:4.0%} {elapsed:5.0f}s {rate} {eta} {message:<32}"

    def close(self) -> None:
        if self.enabled and self.tty and self.shown:
            click.echo("", err=True)
