"""The on-disk layout of an IMP run, written atomically so a crash never leaves half a file.

::

    save_folder/
      config.yaml            the resolved config (a re-run with a different one is refused)
      summary.json           one row per finished level
      rewind/rewind.pt       Composer checkpoint of the dense run at step τ
      level_00/              dense level
        mask.pt              the mask this level trained under ({name: bool tensor})
        weights.pt           the trained solution (state dict of the unwrapped Composer model)
        level.json           this level's summary row; written last, it marks the level done
      level_01/ ...

Every ``.pt`` here loads with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Optional

import torch

__all__ = ['RunFolder', 'atomic_torch_save', 'atomic_write_text']


def _fsync_replace(tmp: str, path: str) -> None:
    with open(tmp, 'rb+') as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary name, fsync, rename: the file appears whole or not at all."""
    tmp = f'{path}.tmp{os.getpid()}'
    torch.save(obj, tmp)
    _fsync_replace(tmp, path)


def atomic_write_text(text: str, path: str) -> None:
    """Write text atomically (temporary name, fsync, rename)."""
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(text)
    _fsync_replace(tmp, path)


class RunFolder:
    """Paths and readers/writers of one IMP run's ``save_folder``."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    # ---- paths -------------------------------------------------------------------------------
    @property
    def config(self) -> str:
        return os.path.join(self.root, 'config.yaml')

    @property
    def summary(self) -> str:
        return os.path.join(self.root, 'summary.json')

    @property
    def rewind(self) -> str:
        return os.path.join(self.root, 'rewind', 'rewind.pt')

    def level_dir(self, level: int) -> str:
        return os.path.join(self.root, f'level_{level:02d}')

    def mask(self, level: int) -> str:
        return os.path.join(self.level_dir(level), 'mask.pt')

    def weights(self, level: int) -> str:
        return os.path.join(self.level_dir(level), 'weights.pt')

    def level_json(self, level: int) -> str:
        return os.path.join(self.level_dir(level), 'level.json')

    def checkpoints(self, level: int) -> str:
        return os.path.join(self.level_dir(level), 'checkpoints')

    # ---- state -------------------------------------------------------------------------------
    def is_done(self, level: int) -> bool:
        return all(os.path.isfile(p) for p in (self.level_json(level), self.mask(level), self.weights(level)))

    def levels_done(self) -> list[int]:
        done, level = [], 0
        while self.is_done(level):
            done.append(level)
            level += 1
        return done

    def is_imp_run(self) -> bool:
        return os.path.isfile(self.config) or os.path.isdir(self.level_dir(0))

    def read_row(self, level: int) -> dict:
        with open(self.level_json(level)) as f:
            return json.load(f)

    def read_summary(self) -> list[dict]:
        with open(self.summary) as f:
            return json.load(f)['levels']

    def load_weights(self, level: int) -> dict[str, torch.Tensor]:
        return torch.load(self.weights(level), map_location='cpu', weights_only=True)

    # ---- writers (rank 0 only) ---------------------------------------------------------------
    def write_level(self, level: int, weights: dict[str, torch.Tensor], row: dict) -> None:
        atomic_torch_save(weights, self.weights(level))
        atomic_write_text(json.dumps(row, indent=2), self.level_json(level))  # last: marks the level done

    def write_summary(self, rows: list[dict], extra: Optional[dict] = None) -> None:
        atomic_write_text(json.dumps({'levels': rows, **(extra or {})}, indent=2), self.summary)

    def clear(self) -> None:
        """Remove every artifact this layout defines (used only when the user asks to start over)."""
        for name in os.listdir(self.root) if os.path.isdir(self.root) else []:
            path = os.path.join(self.root, name)
            if name.startswith('level_') or name in ('rewind', 'analysis'):
                shutil.rmtree(path)
            elif name in ('summary.json', 'config.yaml'):
                os.remove(path)
