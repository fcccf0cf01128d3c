"""Exit codes and the pilot's exception tree.

Every error the pilot raises on purpose derives from :class:`PilotError` and knows
the exit code that ``cli.main`` turns it into. Nothing else calls ``sys.exit``.

    PilotError
    ├── UsageError              bad command line or configuration
    ├── JDLError                malformed or invalid job description (pilot.job.jdl)
    ├── ServerError             the matcher answered with an error
    │   ├── ServerUnreachable   transport failure after all retries
    │   ├── AuthError           401/403 from the matcher
    │   └── Undelivered         job reports left in the outbox at exit
    ├── CheckFailed             a required environment check failed
    ├── CredentialError         missing, unreadable or expired proxy/token
    │   └── NoStoredProxy       a job's owner has no proxy to delegate from
    ├── SandboxError            input sandbox could not be fetched or was rejected
    │   └── DiskFullError       no space left while staging
    └── Signalled               stopped by a signal
"""

from __future__ import annotations

import errno
from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    """Exit codes of ``pilot`` and ``pilot-stub``; documented in the README."""

    OK = 0
    INTERNAL = 1  # a bug: unexpected exception (a traceback is logged)
    USAGE = 2  # bad command line or configuration file
    JDL_INVALID = 10  # job description does not parse or is semantically invalid
    SERVER_UNREACHABLE = 20  # matcher not reachable after retries
    SERVER_ERROR = 21  # matcher answered with an error
    AUTH = 22  # matcher refused our credentials
    UNDELIVERED = 23  # the pilot ended with job reports it could not deliver (see outbox)
    CHECK_FAILED = 30  # a required environment check failed: node not fit
    CREDENTIALS = 31  # proxy/token missing, unreadable or expired
    SANDBOX = 40  # sandbox could not be staged (download, checksum, rejected)
    DISK_FULL = 41  # no space left on the work directory
    JOB_FAILED = 50  # local mode: the payload failed
    SIGNALLED = 60  # pilot stopped by SIGTERM/SIGINT/SIGUSR1/SIGUSR2/SIGXCPU
    DRAINED = 61  # pilot stopped taking work because of the drain file


class PilotError(Exception):
    """Base of every error the pilot raises on purpose."""

    exit_code: ExitCode = ExitCode.INTERNAL
    reported: bool = False  # already logged where it happened: cli.main does not repeat it


class UsageError(PilotError):
    exit_code = ExitCode.USAGE


class ServerError(PilotError):
    exit_code = ExitCode.SERVER_ERROR

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServerUnreachable(ServerError):
    exit_code = ExitCode.SERVER_UNREACHABLE


class AuthError(ServerError):
    exit_code = ExitCode.AUTH


class Undelivered(ServerError):
    exit_code = ExitCode.UNDELIVERED


class CheckFailed(PilotError):
    exit_code = ExitCode.CHECK_FAILED


class CredentialError(PilotError):
    exit_code = ExitCode.CREDENTIALS


class NoStoredProxy(CredentialError):
    """The server holds no (valid) proxy of the job's owner: nothing to delegate."""


class SandboxError(PilotError):
    exit_code = ExitCode.SANDBOX


class DiskFullError(SandboxError):
    exit_code = ExitCode.DISK_FULL


class Signalled(PilotError):
    exit_code = ExitCode.SIGNALLED


# The one mapping of "the disk is full" (errno names, no numbers) to DiskFullError.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError meaning no space (or no quota) is left."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def write_error(exc: OSError, dest: Path) -> SandboxError:
    """What a failed write of ``dest`` (a download, an unpacked file) is for the pilot."""
    if is_disk_full(exc):
        return DiskFullError(f"no space left writing {dest}")
    return SandboxError(f"cannot write {dest}: {exc}")
