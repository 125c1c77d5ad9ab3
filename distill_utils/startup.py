"""Imported first by every entry script: Ctrl-C while the libraries load prints one line and exits 130.
`cli_main` hands SIGINT back to Python's KeyboardInterrupt once the script's own code runs."""
import os
import signal
import sys


def _interrupted_while_loading(signum, frame):
    print("interrupted", file=sys.stderr, flush=True)
    os._exit(130)  # nothing has been written yet


if int(os.environ.get("RANK", "0")) > 0:  # under torchrun, one set of progress bars: rank 0's
    os.environ.setdefault("TQDM_DISABLE", "1")

if "pytest" not in sys.modules and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_while_loading)
