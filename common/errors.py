"""Bad input is reported as one line naming the file or flag, never as a traceback."""
import errno
import functools
import signal
import sys
import threading

# Faults of the machine rather than of the code: reported in one line (the files already written are valid).
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


class UserError(Exception):
    """An input problem the user can fix (a file, a flag, a mismatch)."""


def one_line(err):
    """The first non-empty line of an exception's message (or its type name)."""
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _fail(message, status):
    print(f"error: {message}" if status == 2 else message, file=sys.stderr)
    sys.exit(status)


def cli_main(main):
    """Run an entry point: UserError, a full disk or too little memory -> one line on stderr and a non-zero exit."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)  # undo distill_utils.startup's handler
        try:
            return main(*args, **kwargs)
        except UserError as err:
            _fail(err, 2)
        except OSError as err:
            if err.errno not in _DISK_ERRNOS:
                raise
            _fail(f"cannot write {err.filename or 'an output file'}: {err.strerror}", 2)
        except MemoryError:
            _fail("out of memory (lower --batch_train, --num_queries, --mini_batch_size or --image_size)", 2)
        except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
            if type(err).__name__ != "OutOfMemoryError":
                raise
            _fail(f"out of memory on the device ({one_line(err)[:120]}); lower the batch sizes or --num_queries", 2)
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    return wrapper
