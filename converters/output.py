"""Who owns the output directory, from the start of a conversion to the final rename.

A conversion writes into `.NAME.partial-*` beside OUTPUT and moves the finished bundle into place at the end.
What sits at OUTPUT is looked at twice: when the run starts (`claim_output`) and again just before the move
(`finish_output`); anything that is not ours, or that changed in between, is never replaced. The rules:

- nothing at OUTPUT, or an empty directory: a new bundle goes there;
- a bundle we wrote (a complete, well-formed manifest naming smt-convert, every file in the directory listed
  in it with its recorded size): replaced with `--force`, deleting only the files its manifest lists;
- anything else (a file, a foreign file inside, a stray manifest, a changed card): refused, naming the first
  foreign file. A directory that appeared, or changed, during the run is never touched: the finished bundle is
  left beside it under a name the error says.
- one run at a time per OUTPUT: a lock file `.NAME.lock` beside it (flock, released by the kernel if we die).

The final move is atomic where Linux allows it (renameat2 RENAME_NOREPLACE / RENAME_EXCHANGE), so there is no
moment at which a directory created by someone else can be replaced. Signals are held during the move and the
clean-up, so a second Ctrl-C cannot leave half of either behind.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smt_convert.runtime.bundle import MANIFEST, validate_manifest
from smt_convert.runtime.documents import load_json
from smt_convert.runtime.errors import SmtError

PARTIAL_MARKER = ".smt-convert-partial"  # inside a temporary output: the pid of the run that writes it
HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@dataclass(frozen=True)
class Existing:
    """What was at OUTPUT when the run started."""

    kind: str  # "none", "empty" or "bundle"
    inode: tuple[int, int] | None  # (st_dev, st_ino) of the directory
    listed: tuple[str, ...] = ()  # a bundle's files (its manifest's list, plus the manifest)


@dataclass
class OutputClaim:
    """A claimed output: the real path (a symlinked OUTPUT is followed, the link kept), what was there, the
    temporary directory being written and the held lock."""

    out_dir: Path
    shown: Path
    existing: Existing
    tmp: Path
    lock_fd: int


def real_output(out_dir: Path) -> Path:
    """OUTPUT as an absolute path, a symlink to a directory followed (the link stays, pointing at the bundle)."""
    path = Path(os.path.abspath(out_dir))
    if path.is_symlink() and path.resolve().is_dir():
        path = path.resolve()
    return path


def check_output(out_dir: Path, force: bool) -> Existing:
    """What is at OUTPUT, refused (one line) unless a new bundle may go there. Read-only and cheap: the CLI runs
    it before fetching a Hub checkpoint too."""
    shown, path = Path(out_dir), real_output(out_dir)
    if path == Path(os.path.abspath(os.getcwd())) or path in Path(os.getcwd()).resolve().parents or path.parent == path:
        raise SmtError(f"{shown}: is the current directory or one above it; name a directory to create")
    if os.path.lexists(path) and not path.is_dir():
        raise SmtError(f"{shown}: exists and is not a directory")
    if not path.is_dir():
        return Existing("none", None)
    try:
        entries = sorted(os.listdir(path))
    except OSError as exc:
        raise SmtError(f"{shown}: cannot be read ({exc.strerror or exc})") from None
    stat = path.stat()
    inode = (stat.st_dev, stat.st_ino)
    if not entries:
        return Existing("empty", inode)
    listed = owned_files(path, shown)
    if not force:
        raise SmtError(f"{shown}: already holds a bundle (use --force to replace it)")
    return Existing("bundle", inode, listed)


def owned_files(path: Path, shown: Path) -> tuple[str, ...]:
    """The files of a bundle we wrote, or a one-line refusal naming what makes the directory someone else's."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file() or manifest_path.is_symlink():
        first = sorted(os.listdir(path))[0]
        raise SmtError(
            f"{shown}: holds files that are not an smt-convert bundle (first: {first}); "
            "choose an empty or new directory"
        )
    try:
        manifest = load_json(manifest_path, "manifest.json")
        if not (isinstance(manifest.get("tool"), dict) and manifest["tool"].get("name") == "smt-convert"):
            raise SmtError(f"{manifest_path}: tool.name: not smt-convert")
        if manifest.get("complete") is not True:
            raise SmtError(f"{manifest_path}: complete: not true")
        validate_manifest(manifest, manifest_path, complete=True)
    except SmtError as exc:
        raise SmtError(f"{shown}: is not an smt-convert bundle we can replace ({exc})") from None
    listed = {e["path"]: e["size"] for e in manifest["files"]}
    escaping = next((n for n in listed if Path(n).is_absolute() or ".." in Path(n).parts or not n), None)
    if escaping is not None:  # --force deletes what is listed: only ever inside OUTPUT
        raise SmtError(
            f"{shown}: is not an smt-convert bundle we can replace ({manifest_path}: files lists "
            f"{escaping!r}, a path outside the bundle)"
        )
    parents = {str(p) for name in listed for p in Path(name).parents if str(p) != "."}
    for root, dirs, files in os.walk(path):
        for name in sorted(dirs) + sorted(files):
            rel = os.path.relpath(os.path.join(root, name), path)
            full = os.path.join(root, name)
            if name in dirs and rel in parents and not os.path.islink(full):
                continue
            if rel == MANIFEST:
                continue
            if rel not in listed or os.path.islink(full) or not os.path.isfile(full):
                rel += "/" if os.path.isdir(full) and not os.path.islink(full) else ""
                raise SmtError(
                    f"{shown}: holds {rel}, which its manifest does not list (not written by "
                    "smt-convert); move it away or choose another output"
                )
            if os.path.getsize(full) != listed[rel]:
                raise SmtError(
                    f"{shown}: {rel} changed since smt-convert wrote it (size differs from the "
                    "manifest); move it away or choose another output"
                )
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
    return tuple(sorted(listed)) + (MANIFEST,)


def claim_output(out_dir: Path, force: bool) -> OutputClaim:
    """Lock OUTPUT, check what is there, sweep what killed runs left beside it, and make the temporary
    directory the bundle is written into."""
    shown, path = Path(out_dir), real_output(out_dir)
    check_output(shown, force)  # before anything is created: a refused OUTPUT leaves no trace
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SmtError(f"{parent}: cannot create the output ({exc.strerror or exc})") from None
    lock_fd = _lock(parent / f".{path.name}.lock", shown)
    try:
        existing = check_output(shown, force)  # again, now that no other run of ours can change it
        sweep_partials(parent, path.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=parent))
        (tmp / PARTIAL_MARKER).write_text(f"{os.getpid()}\n")
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it owner-only; a bundle is meant to be shared
    except OSError as exc:
        _unlock(parent / f".{path.name}.lock", lock_fd)
        raise SmtError(f"{parent}: cannot create the output ({exc.strerror or exc})") from None
    except BaseException:
        _unlock(parent / f".{path.name}.lock", lock_fd)
        raise
    return OutputClaim(path, shown, existing, tmp, lock_fd)


def _lock(lock_path: Path, shown: Path) -> int:
    """An exclusive flock on `.NAME.lock`; a second run on the same OUTPUT is refused, naming the holder."""
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SmtError(f"{lock_path}: cannot create the lock file ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise SmtError(
                f"{shown}: another smt-convert run (pid {holder}) is writing this output; wait for it "
                "or choose another output"
            ) from None
        try:  # the previous holder may have removed the file between our open and our lock: lock the new one
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _unlock(lock_path: Path, fd: int) -> None:
    try:
        lock_path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def release(claim: OutputClaim) -> None:
    """Remove the temporary directory if it is still our unfinished work (its marker says so: after the final
    move the path may hold the old bundle's leftovers or a bundle we could not place, which are kept), and the
    lock. Signals are held meanwhile."""
    with held_signals():
        if (claim.tmp / PARTIAL_MARKER).is_file():
            shutil.rmtree(claim.tmp, ignore_errors=True)
        _unlock(claim.out_dir.parent / f".{claim.out_dir.name}.lock", claim.lock_fd)


def finish_output(claim: OutputClaim) -> list[str]:
    """Move the finished bundle into place if OUTPUT is still what it was when the run started; otherwise leave
    the bundle beside it and refuse (one line naming where it is). Returns notes for the user (files that
    appeared inside a replaced bundle during the run and were kept)."""
    out, tmp = claim.out_dir, claim.tmp
    with held_signals():
        changed = _changed_since_claim(claim)
        (tmp / PARTIAL_MARKER).unlink(missing_ok=True)  # from here on, whatever `tmp` holds is kept
        if changed is not None:
            kept = _keep_beside(tmp, out)
            raise SmtError(
                f"{claim.shown}: {changed} during the run and was left as it is; the finished bundle is at {kept}"
            )
        if claim.existing.kind == "none":
            if not _rename(tmp, out, noreplace=True):
                kept = _keep_beside(tmp, out)
                raise SmtError(
                    f"{claim.shown}: appeared during the run and was left as it is; the finished bundle is at {kept}"
                )
            return []
        if claim.existing.kind == "empty":
            try:
                os.rmdir(out)  # only if still empty; then the new bundle takes its place
            except OSError:
                kept = _keep_beside(tmp, out)
                raise SmtError(
                    f"{claim.shown}: was filled during the run and was left as it is; the finished bundle is at {kept}"
                ) from None
            if not _rename(tmp, out, noreplace=True):
                kept = _keep_beside(tmp, out)
                raise SmtError(
                    f"{claim.shown}: appeared during the run and was left as it is; the finished bundle is at {kept}"
                )
            return []
        old = _swap(tmp, out)  # the old bundle is now at `old`
        return _remove_listed(old, claim.existing.listed, out)


def _changed_since_claim(claim: OutputClaim) -> str | None:
    """What happened to OUTPUT since the claim, in words, or None."""
    out, before = claim.out_dir, claim.existing
    if before.kind == "none":
        return "appeared" if os.path.lexists(out) else None
    if not out.is_dir() or out.is_symlink():
        return "was removed or replaced"
    stat = out.stat()
    if (stat.st_dev, stat.st_ino) != before.inode:
        return "was replaced by another directory"
    if before.kind == "empty":
        return "was filled" if os.listdir(out) else None
    try:
        now = owned_files(out, claim.shown)
    except SmtError as exc:
        return f"changed ({exc})"
    return None if now == before.listed else "changed (its manifest lists other files now)"


def _keep_beside(tmp: Path, out: Path) -> Path:
    """Give the finished bundle a visible name next to OUTPUT that nothing else uses."""
    for i in range(1, 1000):
        candidate = out.with_name(f"{out.name}.new" + (f"-{i}" if i > 1 else ""))
        if _rename(tmp, candidate, noreplace=True):
            return candidate
    return tmp


def _swap(tmp: Path, out: Path) -> Path:
    """Exchange the finished bundle and the old one; return where the old one now is."""
    if _renameat2(tmp, out, RENAME_EXCHANGE):
        return tmp
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError as exc:
        os.rename(old, out)
        raise SmtError(f"{out}: cannot move the finished bundle into place ({exc.strerror or exc})") from None
    return old


def _remove_listed(old: Path, listed: tuple[str, ...], out: Path) -> list[str]:
    """Delete the old bundle's own files, then its directories if empty. Anything else found there (a file
    that appeared in the moments before the swap) is kept and reported, never deleted."""
    inside = old.resolve()
    for name in listed:
        path = old / name
        if path.is_file() and not path.is_symlink() and inside in path.resolve().parents:
            path.unlink()
    for root, dirs, _ in sorted(os.walk(old, topdown=False), key=lambda t: -len(t[0])):
        for d in dirs:
            try:
                os.rmdir(os.path.join(root, d))
            except OSError:
                pass
    try:
        os.rmdir(old)
        return []
    except OSError:
        for i in range(1, 1000):
            kept = out.with_name(f"{out.name}.kept" + (f"-{i}" if i > 1 else ""))
            if _rename(old, kept, noreplace=True):
                old = kept
                break
        return [f"{old}: files that appeared in the old bundle during the run were kept here"]


def sweep_partials(parent: Path, name: str) -> None:
    """Remove `.NAME.partial-*` directories of earlier runs that were killed (SIGKILL, power loss): only ours,
    recognised by the marker file, and only when the process that wrote it is gone."""
    for candidate in parent.glob(f".{glob.escape(name)}.partial-*"):
        marker = candidate / PARTIAL_MARKER
        try:
            pid = int(marker.read_text().strip())
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(candidate, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def held_signals():
    """Hold SIGINT/SIGTERM/SIGHUP (delivered when the block ends): a clean-up or a move is never cut in half.
    Python runs signal handlers in the main thread whichever thread the kernel delivers to (the hashing pool,
    onnxruntime's threads), so blocking the signals in one thread is not enough: the handlers themselves only
    note the signal while the block runs, and it is raised again, once, after."""
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in HELD_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


# ---- atomic renames -------------------------------------------------------------------------------------

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100
_renameat2_fn: Any = None
try:
    _renameat2_fn = ctypes.CDLL(None, use_errno=True).renameat2
except (OSError, AttributeError):  # not glibc >= 2.28
    pass


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2; False when the system or the file system does not offer it (callers fall back)."""
    if _renameat2_fn is None:
        return False
    if _renameat2_fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    if err == errno.EEXIST and flags == RENAME_NOREPLACE:
        raise FileExistsError(err, os.strerror(err), str(dst))
    raise OSError(err, os.strerror(err), str(dst))


def _rename(src: Path, dst: Path, noreplace: bool) -> bool:
    """Rename; with `noreplace`, False (nothing moved) when `dst` exists."""
    try:
        if noreplace and _renameat2(src, dst, RENAME_NOREPLACE):
            return True
    except FileExistsError:
        return False
    if noreplace and os.path.lexists(dst):
        return False
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    return True
