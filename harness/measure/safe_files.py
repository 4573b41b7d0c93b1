"""Every file rnnbench writes under a run directory goes through here.

Run directories travel (committed reference results, CI artifacts, a colleague's run), so one may have been
crafted: a ``report.md`` that is a symbolic link to ``~/.bashrc``, a ``figures`` link to ``/etc``, a
``rows.jsonl`` that is a FIFO (a read would block forever) or a directory. The rules:

- a file is written to a fresh temporary name beside it, created exclusively (``O_EXCL``: a planted file or link
  of that name makes the creation fail instead of being followed), then renamed over the target (a rename
  replaces a link, it never writes through it);
- an existing target that is a symbolic link, a directory or anything but a regular file is refused with
  :class:`UnsafePath` (a usage error: exit 2), never followed or replaced;
- appends (``rows.jsonl``) open with ``O_NOFOLLOW`` and must land on a regular file;
- a sub-directory (``figures``) must be a real directory, not a link;
- reads open only regular files (a FIFO or a device is refused before it is opened).
"""
from __future__ import annotations

import errno
import io
import os
import secrets
import stat
from typing import IO, Union

from harness.core.errors import UsageError


class UnsafePath(UsageError):
    """A path under a run directory that rnnbench will not write through or read (a link, a FIFO, ...)."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def check_target(path: str) -> None:
    """Raise :class:`UnsafePath` unless ``path`` is missing or a regular file (links are not followed)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(f"{path} is {_kind(st.st_mode)}; rnnbench writes only regular files in a run directory "
                         "(remove it, or use another directory)")


def safe_dir(path: str) -> str:
    """``path`` as a real directory (created if missing); :class:`UnsafePath` for a link or a file there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        try:
            os.makedirs(path, 0o755, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create {path}: {e.strerror or e}") from None
        st = os.lstat(path)  # created just now, by us or by someone racing us: check what it is
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} is {_kind(st.st_mode)}, not a directory; rnnbench will not write through it "
                         "(remove it, or use another directory)")
    return path


def write_atomic(path: str, data: Union[str, bytes]) -> None:
    """Write ``data`` to ``path`` by an exclusively created temporary file and a rename (see the module)."""
    check_target(path)
    # backslashreplace: a path that is not UTF-8 (a surrogate escape) must not cost the report; the file stays UTF-8
    raw = data.encode("utf-8", "backslashreplace") if isinstance(data, str) else bytes(data)
    tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, 0o644)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_figure(fig, fig_dir: str, name: str, **savefig_kw) -> str:
    """``fig.savefig`` into ``fig_dir/name`` through :func:`write_atomic` (``fig_dir`` must be a real directory).
    Returns the path."""
    if os.sep in name or name in ("", ".", ".."):
        raise UsageError(f"figure name: got {name!r}; expected a plain file name")
    safe_dir(fig_dir)
    buf = io.BytesIO()
    fmt = os.path.splitext(name)[1].lstrip(".") or "png"
    fig.savefig(buf, format=fmt, **savefig_kw)
    path = os.path.join(fig_dir, name)
    write_atomic(path, buf.getvalue())
    return path


def open_append(path: str) -> IO[str]:
    """``path`` opened for appending text, never through a link and only if it is (or becomes) a regular file."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)  # RDWR: the torn-tail check reads
    check_target(path)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePath(f"{path} is a symbolic link; rnnbench will not append through it") from None
        raise UsageError(f"cannot open {path} for writing: {e.strerror or e}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(f"{path} is not a regular file; rnnbench will not append to it")
    return os.fdopen(fd, "a", encoding="utf-8")


def check_readable_file(path: str) -> None:
    """Raise :class:`UnsafePath` if ``path`` exists but is not a regular file (following links, as a read does):
    a FIFO would block the reader forever, a directory or a device is not a file of rows."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(f"{path} is {_kind(st.st_mode)}, not a file rnnbench can read")


def check_output_path(path: str, option: str) -> str:
    """Before any work: ``path`` (a file the user asked for, e.g. ``--markdown``) can be written, or UsageError
    naming ``option``. Its directory must exist and be writable; the path must not be a directory."""
    if not isinstance(path, str) or not path.strip():
        raise UsageError(f"{option}: got {path!r}; expected a file path")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{option}: {path!r} is a directory; expected a file path")
    if not os.path.isdir(parent):
        raise UsageError(f"{option}: the directory of {path!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"{option}: {path!r} is not writable")
    return path


def ensure_run_dir(path: str) -> str:
    """The run directory the user named, created if missing. It may itself be reached through a link (the user
    chose that path); what is *inside* it is checked by the other functions here."""
    if not os.path.isdir(path):
        try:
            os.makedirs(path, 0o755, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create the run directory {path}: {e.strerror or e}") from None
    return path


def ensure_out_dir(path: str, option: str = "--out") -> str:
    """An output directory the user named: created if missing and writable, or a one-line UsageError naming
    ``option`` (a file in the way, a parent that cannot be created, no write permission)."""
    if not isinstance(path, str) or not path.strip():
        raise UsageError(f"{option}: got {path!r}; expected a directory path")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{option}: {path!r} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{option}: cannot create {path!r}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{option}: {path!r} is not writable")
    return path
