"""The on-disk layout of an IMP run, written atomically so a crash never leaves half a file.

::

    save_folder/
      config.yaml            the resolved config (a re-run with a different one is refused)
      summary.json           one row per finished level
      rewind/rewind.pt       Composer checkpoint of the dense run at step τ
      level_00/              dense level
        mask.pt              the mask this level trained under ({name: bool tensor})
        selection.json       how the mask was chosen (ratio, adaptive sweep report), written with it
        weights.pt           the trained solution (state dict of the unwrapped Composer model)
        level.json           this level's summary row with a manifest (SHA-256 of mask.pt, weights.pt and,
                             for level 0, rewind.pt); written last, it marks the level done
      level_01/ ...

Every ``.pt`` here loads with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import warnings
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from composer_imp.masks import load_mask

__all__ = ['RunFolder', 'atomic_torch_save', 'atomic_write_text', 'sha256', 'changed_keys', 'replicate_folder',
           'replicate_folders', 'LEGACY_REWINDING']

# What runs made before IMP's rewind_optimizer / data_order options did (their config.yaml lacks the keys).
LEGACY_REWINDING = {'rewind_optimizer': True, 'data_order': 'replay'}


def sha256(path: str) -> str:
    """Hex SHA-256 of a file (the level manifest records it to detect truncated or corrupted artifacts)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


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


def changed_keys(old: Any, new: Any, prefix: str = '') -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every leaf that differs (``'<unset>'`` where one side lacks it)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [c for k in keys for c in changed_keys(old.get(k, '<unset>'), new.get(k, '<unset>'), f'{prefix}{k}.')]
    return [] if old == new else [(prefix[:-1], old, new)]


def replicate_folder(save_folder: str, index: int) -> str:
    """Where replicate ``index`` of the run in ``save_folder`` lives."""
    return os.path.join(save_folder, f'replicate_{index:02d}')


def replicate_folders(save_folder: str) -> list[str]:
    """The replicate runs under ``save_folder`` (folders ``replicate_XX`` holding a ``config.yaml``), in order."""
    found = sorted(glob.glob(os.path.join(glob.escape(save_folder), 'replicate_[0-9][0-9]')))
    return [f for f in found if os.path.isfile(RunFolder(f).config)]


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

    @property
    def pretraining_checkpoints(self) -> str:
        return os.path.join(self.root, 'rewind', 'checkpoints')

    def level_dir(self, level: int) -> str:
        return os.path.join(self.root, f'level_{level:02d}')

    def mask(self, level: int) -> str:
        return os.path.join(self.level_dir(level), 'mask.pt')

    def selection(self, level: int) -> str:
        return os.path.join(self.level_dir(level), 'selection.json')

    def weights(self, level: int) -> str:
        return os.path.join(self.level_dir(level), 'weights.pt')

    def level_json(self, level: int) -> str:
        return os.path.join(self.level_dir(level), 'level.json')

    def checkpoints(self, level: int) -> str:
        return os.path.join(self.level_dir(level), 'checkpoints')

    # ---- state -------------------------------------------------------------------------------
    def is_done(self, level: int) -> bool:
        return all(os.path.isfile(p) for p in (self.level_json(level), self.mask(level), self.weights(level)))

    def _checksummed(self, level: int) -> dict[str, str]:
        """The files a level's manifest covers: its mask and weights, and for level 0 the rewind point."""
        files = {'mask.pt': self.mask(level), 'weights.pt': self.weights(level)}
        return {**files, 'rewind.pt': self.rewind} if level == 0 else files

    def manifest(self, level: int) -> dict[str, str]:
        return {name: sha256(path) for name, path in self._checksummed(level).items()}

    def verify(self, level: int) -> bool:
        """True if level ``level`` is done and its artifacts match their checksums; else its files are
        removed (with a warning if they were corrupted) so the level is trained again."""
        if not self.is_done(level):
            return False
        try:
            recorded = self.read_row(level)['manifest']
            files = self._checksummed(level)
            bad = [name for name, digest in recorded.items() if not os.path.isfile(files[name]) or sha256(files[name]) != digest]
        except (ValueError, KeyError, OSError):  # unreadable or manifest-less level.json
            bad = ['level.json']
        if not bad:
            return True
        warnings.warn(f'{self.level_dir(level)}: {", ".join(bad)} truncated or corrupted (checksum mismatch); '
                      f'level {level} will be trained again.')
        self.forget(level)
        return False

    def forget(self, level: int) -> None:
        """Remove a level's artifacts (and, for level 0, the rewind point) so it is redone."""
        for path in [self.level_json(level), self.selection(level), *self._checksummed(level).values()]:
            if os.path.isfile(path):
                os.remove(path)

    def levels_done(self) -> list[int]:
        done, level = [], 0
        while self.is_done(level):
            done.append(level)
            level += 1
        return done

    def recorded_seed(self) -> int:
        """The seed the run in this folder was made with (``config.yaml``)."""
        return int(OmegaConf.load(self.config).get('seed', 17))

    def recorded_data_seed(self) -> int:
        """The data-order seed the run was made with (a replicate's index; 0 for a single run)."""
        return int(OmegaConf.load(self.config).get('data_seed', 0))

    def recorded_imp(self) -> dict:
        """The IMP settings the run was made with (``config.yaml``'s ``imp``). Runs made before the rewinding options
        existed restored the optimizer and replayed the data order (:data:`LEGACY_REWINDING`)."""
        imp = OmegaConf.to_container(OmegaConf.load(self.config), resolve=True).get('imp') or {}
        return {**imp, **{k: v for k, v in LEGACY_REWINDING.items() if k not in imp}}

    def read_row(self, level: int) -> dict:
        with open(self.level_json(level)) as f:
            return json.load(f)

    def read_summary(self) -> list[dict]:
        with open(self.summary) as f:
            return json.load(f)['levels']

    def read_selection(self, level: int) -> Optional[tuple[dict, float, Optional[dict]]]:
        """``(mask, ratio, sweep report)`` chosen for ``level`` before an interruption, if both files exist."""
        if not (os.path.isfile(self.mask(level)) and os.path.isfile(self.selection(level))):
            return None
        with open(self.selection(level)) as f:
            selection = json.load(f)
        return load_mask(self.mask(level)), selection['ratio'], selection['sweep']

    def load_weights(self, level: int) -> dict[str, torch.Tensor]:
        return torch.load(self.weights(level), map_location='cpu', weights_only=True)

    # ---- writers (rank 0 only) ---------------------------------------------------------------
    def write_summary(self, rows: list[dict], extra: Optional[dict] = None) -> None:
        atomic_write_text(json.dumps({'levels': rows, **(extra or {})}, indent=2), self.summary)

    def clear(self) -> None:
        """Remove every artifact this layout defines (used only when the user asks to start over)."""
        for name in os.listdir(self.root) if os.path.isdir(self.root) else []:
            path = os.path.join(self.root, name)
            if name.startswith('level_') or name in ('rewind', 'analysis', 'stability'):
                shutil.rmtree(path)
            elif name in ('summary.json', 'config.yaml'):
                os.remove(path)
