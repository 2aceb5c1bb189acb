"""What every command a user types shares: a user error (a missing file, an unreadable image, a bad argument or
params) ends in one line on stderr and exit status 2, like a usage error; a stage that cannot finish for a reason
outside its input (a StageFailure) ends in one line and exit status 1; a bug keeps its traceback.

Commands: ``python -m fixclip``, ``python -m pipeline.profile``, ``python -m pipeline.report``, ``python -m bench``
and the stages (``pipeline.params.exit_on_params_error``).
"""
import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

USAGE_ERROR = 2  # the exit status of a usage error, as argparse and POSIX utilities use


class UserError(Exception):
    """Something the user gave is wrong; the message names it (the key, the file) and says what is wrong."""


class StageFailure(RuntimeError):
    """A stage cannot finish for a reason outside its input (e.g. a worker process died): one line, exit 1, and the
    rerun resumes. The message says what happened."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad argument as one line (``error: prog: message``) instead of usage plus message."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


@contextmanager
def user_errors(*also: type[Exception]) -> Iterator[None]:
    """Turn a UserError (and the given exception types) into one line on stderr and exit status 2."""
    try:
        yield
    except (UserError, *also) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None


def _stat(value: str) -> Path:
    """The path, once the system can look it up (a name too long for the file system is a user error too)."""
    path = Path(value)
    try:
        path.exists()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{value[:80]}{'...' if len(value) > 80 else ''}: not a path "
                                         f"({exc.strerror})") from None
    return path


def existing_file(value: str) -> Path:
    """argparse type: a path that is a readable file."""
    path = _stat(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value}: {'not a file' if path.exists() else 'no such file'}")
    return path


def existing_path(value: str) -> Path:
    """argparse type: a path that exists (a file or a folder)."""
    path = _stat(value)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{value}: no such file or folder")
    return path


def existing_folder(value: str) -> Path:
    """argparse type: a path that is a folder."""
    path = _stat(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: {'not a folder' if path.exists() else 'no such folder'}")
    return path
