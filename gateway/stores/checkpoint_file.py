"""The export checkpoint's file (``audit.checkpoint_file``): read it, replace it atomically.

What a checkpoint is and how a trail is held to it is ``gateway.core.audit_checkpoint``'s. The
file lives outside Redis on purpose, next to the exports: a Redis that lost its data cannot take
the checkpoint with it.
"""

from __future__ import annotations

from pathlib import Path

from gateway.core.audit_checkpoint import Checkpoint
from gateway.stores.audit_file_io import write_atomic


def read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint in ``path``; None when there is none yet. ``ValueError`` naming the file
    when it cannot be read or is not a checkpoint."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the audit checkpoint {path}: {exc}") from None
    try:
        return Checkpoint.from_json(text)
    except ValueError as exc:
        raise ValueError(f"{path} (audit.checkpoint_file): {exc}") from None


def write_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Replace ``path`` (temporary file, fsync, rename): a crash leaves the old or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, checkpoint.to_json() + "\n")
