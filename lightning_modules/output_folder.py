"""Atomic output folders: results appear all at once, or not at all.

A run writes into a hidden temporary sibling ``.<name>.tmp-<id>`` and renames it into place when
complete (an existing folder, with ``overwrite``, is swapped out and removed only after the rename).
The temporary folder records its owner (host and process id) so that the next run can tell a folder
left by a killed run (SIGKILL, a node crash) from one that another live run is writing: stale ones on
this host are removed and reported; those of other hosts are only reported.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

OWNER_FILE = ".owner.json"


class OutputFolderError(ValueError):
    """The output folder cannot be used (exists without ``overwrite``, not writable, not a folder)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputFolder:
    """``check()`` before any work, ``create()`` the temporary folder, then ``commit()`` or ``discard()``.

    ``run_id`` names the temporary folder; ranks of one distributed run must agree on it (the caller
    broadcasts rank 0's ``tmp``), single-process runs take a random one.
    """

    def __init__(self, output: str | os.PathLike, overwrite: bool = False, run_id: str | None = None):
        self.final = Path(output).absolute()
        self.overwrite = overwrite
        self.tmp = self.final.parent / f".{self.final.name}.tmp-{run_id or uuid.uuid4().hex[:12]}"
        self._made: list[Path] = []

    # ------------------------------------------------------------------ before the run
    def check(self) -> None:
        """Refuse an output that exists without ``overwrite``, is not a folder, or cannot be written."""
        if self.final.exists() or self.final.is_symlink():
            if not self.final.is_dir():
                raise OutputFolderError(f"--output {self.final} exists and is not a folder")
            if any(self.final.iterdir()) and not self.overwrite:
                raise OutputFolderError(f"--output {self.final} already holds results; pass --overwrite to replace them")
        ancestor = next((p for p in [self.final.parent, *self.final.parent.parents] if p.exists()), None)
        if ancestor is None or not ancestor.is_dir():
            raise OutputFolderError(f"--output {self.final}: {ancestor} is not a folder")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise OutputFolderError(f"--output {self.final}: cannot write in {ancestor} (permission denied)")
        probe = ancestor / f".{self.final.name}.probe-{uuid.uuid4().hex[:8]}"
        try:  # os.access says yes to root even on a read-only file system: try it
            probe.mkdir()
            probe.rmdir()
        except OSError as e:
            raise OutputFolderError(f"--output {self.final}: cannot write in {ancestor} ({e.strerror or e})") from None

    def stale(self) -> list[Path]:
        """Temporary siblings of earlier runs of this output (ours excluded)."""
        if not self.final.parent.is_dir():
            return []
        return sorted(p for p in self.final.parent.glob(f".{self.final.name}.tmp-*") if p != self.tmp and p.is_dir())

    def clean_stale(self) -> list[str]:
        """Remove temporary folders left by dead runs on this host; one message per folder found."""
        host, messages = socket.gethostname(), []
        for p in self.stale():
            try:
                owner = json.loads((p / OWNER_FILE).read_text())
            except (OSError, ValueError):
                owner = {}
            alive = owner.get("host") == host and isinstance(owner.get("pid"), int) and _pid_alive(owner["pid"])
            if owner.get("host") == host and not alive:
                shutil.rmtree(p, ignore_errors=True)
                messages.append(f"removed {p}, left by a run (pid {owner.get('pid')}) that no longer exists")
            elif alive:
                messages.append(f"{p} belongs to a running process (pid {owner['pid']}); left alone")
            else:
                messages.append(f"{p} was left by a run on {owner.get('host', 'an unknown host')}; remove it by hand "
                                "if that run is over")
        return messages

    # ------------------------------------------------------------------ the run
    def create(self) -> Path:
        missing = [p for p in [self.final.parent, *self.final.parent.parents] if not p.exists()]
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._made = missing  # deepest first: removed in this order on failure
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        (self.tmp / OWNER_FILE).write_text(json.dumps(owner))
        return self.tmp

    def commit(self) -> Path:
        """Rename the temporary folder into place (checking again: another run may have written there)."""
        self.check()
        (self.tmp / OWNER_FILE).unlink(missing_ok=True)
        old = None
        if self.final.exists():
            old = self.final.parent / f".{self.final.name}.old-{uuid.uuid4().hex[:12]}"
            os.rename(self.final, old)
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            if old is not None:
                os.rename(old, self.final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        for p in self._made:
            try:
                p.rmdir()
            except OSError:
                break
