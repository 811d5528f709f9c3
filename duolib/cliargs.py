"""Value parsers of the ``duo`` command line's options (stdlib only: ``duo --help`` stays fast).

Each raises ``argparse.ArgumentTypeError`` with a message saying what to give: argparse shows that
message after the option's name (a plain ValueError would show the parser function's own name)."""

from __future__ import annotations

import sys
from argparse import Action, ArgumentTypeError


def threads_value(text: str):
    """``--threads``: a positive integer or 'auto' (argparse shows this message, naming the option)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ArgumentTypeError(f"{text!r} is not a number of threads: give a positive integer or 'auto'") from None


def seed_value(text: str) -> int:
    """``--seed``: an integer in [0, 2**64) (torch's generators take 64-bit seeds)."""
    try:
        seed = int(text)
    except ValueError:
        raise ArgumentTypeError(f"{text!r} is not an integer seed") from None
    if not 0 <= seed < 2**64:
        raise ArgumentTypeError(f"{seed} is out of range: give a seed from 0 to 2**64 - 1")
    return seed


def deprecated_alias(old: str, new: str) -> type[Action]:
    """An argparse action for the old spelling ``old`` of option ``new``: it stores the value under the new
    option's name and warns (on stderr) that the old spelling goes in the next release."""

    class Deprecated(Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"duo {parser.prog.split()[-1]}: {old} is deprecated and will be removed in the next release; "
                  f"use {new}", file=sys.stderr)
            setattr(namespace, self.dest, values)

    return Deprecated
