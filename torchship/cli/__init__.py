"""The command line: argparse, the rich tables and the exit codes. Nothing outside this package
imports it; it calls the Python API."""

from torchship.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
