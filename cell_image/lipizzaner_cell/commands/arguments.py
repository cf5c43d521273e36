"""The command line's parser and its numeric flags, checked where they are parsed: what is
wrong is one line and exit 2, never argparse's usage block."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn


class UsageError(ValueError):
    """A flag or argument the command cannot take."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors raised as `UsageError` for the command to say in one line
    (its subcommands' parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def whole(minimum: int) -> Callable[[str], int]:
    """A whole number of at least `minimum` (`--threads 1`, `--cell 0`)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def number(above: float | None = None, unit: str = "") -> Callable[[str], float]:
    """A finite number, greater than `above` if given (`--timeout` in seconds, a score)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number{unit}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number{unit}, got {text}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be > {above:g}{unit}, got {text}")
        return value

    return parse


seconds = number(above=0, unit=" (seconds)")
finite = number()
