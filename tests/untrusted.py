"""A weight file that runs a command when unpickled (what ``torch.load(weights_only=False)``, e.g.
through torch.hub, would do): the command creates ``marker``."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

import torch


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def write_command_pickle(path: Path, marker: Path, key: str) -> Path:
    """A torch.save file whose entry ``key`` runs ``touch marker`` when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: _Payload(marker)}, path)
    return path
