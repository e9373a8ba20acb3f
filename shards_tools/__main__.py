"""`python -m shards_tools <pack|verify|stats|show|synth> ...`: the console commands without installing."""
from __future__ import annotations

import importlib
import sys

COMMANDS = ("pack", "verify", "stats", "show", "synth")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m shards_tools {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return importlib.import_module(f"shards_tools.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
