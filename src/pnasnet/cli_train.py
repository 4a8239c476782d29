"""Command line: the `train` command (argument parsing and printing only)."""

from __future__ import annotations

import argparse


def add_train_commands(sub: argparse._SubParsersAction) -> None:
    """Register this group's subcommands on the top-level parser."""
