"""Bad input is reported as one line naming the file or flag, never as a traceback."""
import functools
import sys


class UserError(Exception):
    """An input problem the user can fix (a file, a flag, a mismatch)."""


def cli_main(main):
    """Run an entry point: UserError -> one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
