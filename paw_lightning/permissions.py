"""Files a run writes are never world-writable: ``no_world_write()`` adds "others may not write" to the
process's umask (``paw`` calls it before anything is written).

Everything a run writes (checkpoints, adapters, ``episodes.jsonl``, CSV and TensorBoard logs, the game and
model caches, and what env workers, JVMs and vLLM's engine write, since child processes inherit the umask)
is created with the umask's permissions. The usual umask, 022, already leaves files readable but not
writable by other accounts; a umask of 000 (some containers and shared lab accounts) would leave a run's
folders open to anyone on the machine, who could then swap a checkpoint or an adapter. Readable by others
is the default and kept (a shared results folder); ``umask 077`` before ``paw fit`` keeps a run private
(docs/security.md). Scratch folders made with ``tempfile`` (vLLM's adapter folder, ScienceWorld's and
TextWorldExpress's object-tree files) are private to the user whatever the umask.
"""

from __future__ import annotations

import os

WORLD_WRITE = 0o002  # the "others: write" permission bit


def no_world_write() -> int:
    """Add ``WORLD_WRITE`` to the process's umask (bits already set, e.g. ``umask 077``, stay); returns the new umask."""
    mask = os.umask(0) | WORLD_WRITE
    os.umask(mask)
    return mask
