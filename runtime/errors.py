"""Errors a user can act on: one line naming the file and field, mapped to an exit code by the CLI."""


class SmtError(Exception):
    """Bad input or environment. The message is shown as-is, without a traceback (exit code 2)."""

    exit_code = 2


class VerificationFailed(SmtError):
    """A bundle was produced or checked, but its numbers are outside the documented thresholds (exit 1)."""

    exit_code = 1


def first_line(exc: BaseException, limit: int = 300) -> str:
    """A library exception reduced to what fits in our one-line errors: its first line (at most `limit`
    characters), or its class name when it says nothing."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def where(path, field=None) -> str:
    """Format the 'file: field' prefix used by every error message."""
    return f"{path}: {field}" if field else f"{path}"


class Terminated(BaseException):
    """SIGTERM (timeout, CI cancellation, docker stop) or SIGHUP (terminal closed) raised as an exception so
    that temporary output is removed on the way out; the CLI exits 143 / 129 as a process killed by the signal
    would."""

    def __init__(self, exit_code: int = 143):
        super().__init__(exit_code)
        self.exit_code = exit_code
