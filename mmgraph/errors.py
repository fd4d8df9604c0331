"""Typed exceptions. The CLI turns every :class:`MMGraphError` into one line on stderr and exit code 2."""
from __future__ import annotations


class MMGraphError(Exception):
    """Base class for errors caused by user input (data, config, arguments)."""


class DataError(MMGraphError, ValueError):
    """A data file or array is malformed (names the file, row or id and what was expected)."""


class ConfigError(MMGraphError, ValueError):
    """A configuration value is unknown or invalid."""


class TrainingError(MMGraphError, RuntimeError):
    """Training diverged (NaN/inf loss) or cannot continue."""


def run_script(main) -> None:
    """``sys.exit(main())`` for the scripts in ``scripts/``: an :class:`MMGraphError` (bad input) ends with one
    ``error: ...`` line on stderr and exit code 2, as the ``mmgraph`` command does; Ctrl-C with 130."""
    import sys

    try:
        code = main()
    except MMGraphError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
