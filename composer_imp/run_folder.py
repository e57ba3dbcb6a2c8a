"""The run folder: every path of an IMP run, its atomic checksummed files, verified reads, the lock and safe
overwrite. Nothing else in the package builds a path inside a run folder.

::

    save_folder/
      .composer-imp-run      the marker: this folder was made by composer-imp (overwrite touches no other folder)
      .composer-imp.lock     the lock held by the process training in (or branching from) this run
      config.yaml            the resolved config, written before any training (a re-run with a different one is
                             refused)
      summary.json           one row per finished level
      rewind/rewind.pt       Composer checkpoint of the dense run at step τ
      level_00/              dense level
        mask.pt              the mask this level trained under ({name: bool tensor})
        selection.json       how the mask was chosen (ratio, adaptive sweep report), written with it
        weights.pt           the trained solution (state dict of the unwrapped Composer model)
        level.json           this level's summary row with a manifest (SHA-256 of mask.pt, weights.pt and,
                             for level 0, rewind.pt) and the SHA-256 of the row itself; written last, it marks
                             the level done
        controls/KIND.json   a control trained from this level (composer_imp.controls)
      level_01/ ...
      stability/             the Appendix D experiments (composer_imp.stability)
      analysis/              the landscape analysis (composer_imp.analysis), with its own lock and cache/
      replicate_00/ ...      with replicates: one complete run folder per seed
      .composer-imp-replaced/  during an overwrite only: the previous run, until the new one has started

Every ``.pt`` here loads with ``torch.load(path, weights_only=True)``. Readers that compute results
(:meth:`RunFolder.verified_row`, :meth:`RunFolder.verified_load`) check every file against its recorded SHA-256 and
refuse, naming the file, one that does not match.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import re
import shutil
import warnings
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from composer_imp.folder_lock import FolderLock
from composer_imp.masks import load_mask

__all__ = ['RunFolder', 'CorruptArtifact', 'atomic_torch_save', 'atomic_write_text', 'sha256', 'row_digest',
           'changed_keys', 'LEGACY_REWINDING', 'IMP_NAMES']

IMP_NAMES = ('IMP', 'AdaptiveIMP')
_MARKER = '.composer-imp-run'
_REPLACED = '.composer-imp-replaced'
# The top-level entries a run folder's layout defines: what an overwrite sets aside (and nothing else).
_LAYOUT = re.compile(r'^(config\.yaml|summary\.json|accuracy_vs_compute\.png|rewind|analysis|stability|'
                     r'level_\d{2,}|replicate_\d{2,}|\.composer-imp-run)$')
_TEMPORARY = re.compile(r'\.tmp\d+(\.pt)?$')  # temporary names: file.tmpPID (the rewind point's: .tmpPID.pt)


class CorruptArtifact(ValueError):
    """A run file does not match its recorded checksum (changed, truncated) or cannot be read."""

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


def _atomic(path: str, write) -> None:
    """``write(tmp)``, fsync, rename: the file appears whole or not at all; a failed write (a full disk) leaves
    neither a half file nor its temporary behind."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        write(tmp)
        _fsync_replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` atomically (temporary name, fsync, rename)."""
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: str) -> None:
    """Write text atomically (temporary name, fsync, rename)."""
    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write(text)
    _atomic(path, write)


def row_digest(row: dict) -> str:
    """SHA-256 of a level row (without its own ``row_sha256``) in canonical JSON: a hand-edited ``level.json`` no
    longer matches it."""
    body = {k: v for k, v in row.items() if k != 'row_sha256'}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def changed_keys(old: Any, new: Any, prefix: str = '') -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every leaf that differs (``'<unset>'`` where one side lacks it)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [c for k in keys for c in changed_keys(old.get(k, '<unset>'), new.get(k, '<unset>'), f'{prefix}{k}.')]
    return [] if old == new else [(prefix[:-1], old, new)]


class RunFolder:
    """Every path of one IMP run's ``save_folder``, its readers and writers, its lock and its overwrite."""

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
    def compute_figure(self) -> str:
        return os.path.join(self.root, 'accuracy_vs_compute.png')

    @property
    def marker(self) -> str:
        return os.path.join(self.root, _MARKER)

    @property
    def replaced(self) -> str:
        return os.path.join(self.root, _REPLACED)

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

    def control(self, level: int, kind: str) -> str:
        return os.path.join(self.level_dir(level), 'controls', f'{kind}.json')

    @property
    def stability_dir(self) -> str:
        return os.path.join(self.root, 'stability')

    def stability_weights(self, branch: str) -> str:
        return os.path.join(self.stability_dir, branch, 'weights.pt')

    def stability_record(self, branch: str) -> str:
        """What a branch's ``weights.pt`` was trained from and its own SHA-256 (it is reused only while they match)."""
        return os.path.join(self.stability_dir, branch, 'weights.json')

    @property
    def analysis_dir(self) -> str:
        return os.path.join(self.root, 'analysis')

    @property
    def analysis_cache(self) -> str:
        return os.path.join(self.analysis_dir, 'cache')

    @property
    def analysis_json(self) -> str:
        return os.path.join(self.analysis_dir, 'analysis.json')

    @property
    def replicates_json(self) -> str:
        return os.path.join(self.analysis_dir, 'replicates.json')

    def stability_result(self, experiment: str, suffix: str = 'json') -> str:
        """``stability/{experiment}.json`` (or its figure, ``suffix='png'``)."""
        return os.path.join(self.stability_dir, f'{experiment}.{suffix}')

    def replicate(self, index: int) -> 'RunFolder':
        """Replicate ``index`` of the run in this folder (``replicate_XX``)."""
        return RunFolder(os.path.join(self.root, f'replicate_{index:02d}'))

    def replicates(self) -> list['RunFolder']:
        """The replicate runs in this folder (``replicate_XX`` holding a ``config.yaml``), in order."""
        names = os.listdir(self.root) if os.path.isdir(self.root) else []
        found = sorted((int(n.split('_')[1]), n) for n in names if re.fullmatch(r'replicate_\d{2,}', n))
        folders = [RunFolder(os.path.join(self.root, n)) for _, n in found]
        return [f for f in folders if os.path.isfile(f.config)]

    # ---- the lock and the marker --------------------------------------------------------------
    def lock(self, purpose: str = 'training') -> FolderLock:
        """The lock of everything that trains in or branches from this run (a context manager). ``'analysis'``:
        the analysis's own, so a finished part of a run can be analysed while later levels train."""
        name = '.composer-imp.lock' if purpose != 'analysis' else '.composer-imp-analysis.lock'
        return FolderLock(os.path.join(self.root, name), purpose)

    def is_ours(self) -> bool:
        """Whether composer-imp made this folder: its marker, or (runs made before the marker) a ``config.yaml``
        that records IMP settings."""
        if os.path.isfile(self.marker) or self._legacy_replicates():
            return True
        try:
            config = OmegaConf.to_container(OmegaConf.load(self.config), resolve=True)
        except Exception:  # missing or not YAML
            return False
        if not isinstance(config, dict):
            return False
        algorithms = config.get('algorithms') or {}
        return isinstance(config.get('imp'), dict) or any(name in algorithms for name in IMP_NAMES)

    def _legacy_replicates(self) -> bool:
        return any(r.is_ours() for r in self.replicates())

    def mark(self) -> None:
        """Write the marker (rank 0, once the run has passed its checks)."""
        if not os.path.isfile(self.marker):
            os.makedirs(self.root, exist_ok=True)
            atomic_write_text(json.dumps({'made_by': 'composer-imp',
                                          'created': datetime.datetime.now().isoformat(timespec='seconds')}),
                              self.marker)

    def layout_entries(self) -> list[str]:
        """The top-level entries of this folder that the run-folder layout defines (sorted)."""
        names = os.listdir(self.root) if os.path.isdir(self.root) else []
        return sorted(n for n in names if _LAYOUT.match(n))

    # ---- safe overwrite -----------------------------------------------------------------------
    # A journal inside the set-aside folder says how far an overwrite got, so a failure or a kill at any step is
    # undone (or finished) the same way: 'moving' -> 'moved' -> 'started' (then deleted), or -> 'restoring'.
    @property
    def _journal(self) -> str:
        return os.path.join(self.replaced, 'journal.json')

    def _write_journal(self, entries: list[str], state: str) -> None:
        atomic_write_text(json.dumps({'entries': entries, 'state': state}), self._journal)

    def check_ownership(self) -> None:
        """Refuse a folder that holds entries the run layout names but that composer-imp did not make (its own
        ``analysis/``, a ``summary.json``): a run there could later overwrite them as its own."""
        entries = [n for n in self.layout_entries() if n != _MARKER]
        if entries and not self.is_ours():
            raise ValueError(f'{self.root} was not made by composer-imp (no {_MARKER} marker and no config.yaml with '
                             f'IMP settings), but holds {", ".join(entries)}, which a run would write (and an overwrite '
                             'deletes only runs it made). Choose another save_folder, or move those entries away '
                             'yourself.')

    def set_aside(self) -> None:
        """Move the run in this folder to ``.composer-imp-replaced/`` (overwrite, first step). Refuses a folder
        composer-imp did not make; entries outside the layout (your own files) stay where they are. A failure part
        way puts everything back."""
        self.check_ownership()
        entries = self.layout_entries()
        if not entries:
            return
        os.makedirs(self.replaced)
        self._write_journal(entries, 'moving')
        try:
            for name in entries:
                os.rename(os.path.join(self.root, name), os.path.join(self.replaced, name))
            self._write_journal(entries, 'moved')
        except BaseException:
            self.settle_replaced()  # the journal says 'moving': everything moved so far goes back
            raise

    def mark_started(self) -> None:
        """The new run has passed its checks and written its config: the previous run can go."""
        if os.path.isdir(self.replaced):
            with open(self._journal) as f:
                entries = json.load(f)['entries']
            self._write_journal(entries, 'started')
            self.settle_replaced()

    def settle_replaced(self) -> None:
        """Finish an interrupted or failed overwrite as its journal says: delete the previous run once the new one has
        started, else put it back (what the new run wrote in its place is removed first)."""
        if not os.path.isdir(self.replaced):
            return
        try:
            with open(self._journal) as f:
                journal = json.load(f)
        except (OSError, ValueError):
            if [n for n in os.listdir(self.replaced) if not _TEMPORARY.search(n)]:
                raise ValueError(f'{self.replaced} holds files but no journal.json: composer-imp did not leave it so. '
                                 'Move it away yourself, then run again.') from None
            shutil.rmtree(self.replaced)  # killed before the journal was written: nothing was moved yet
            return
        if journal['state'] == 'started':
            shutil.rmtree(self.replaced)
            return
        entries = journal['entries']
        if journal['state'] != 'moving':
            self._write_journal(entries, 'restoring')
            aside = set(os.listdir(self.replaced))
            for name in self.layout_entries():  # written by the new run: not listed, or listed and not yet back
                if name not in entries or name in aside:
                    path = os.path.join(self.root, name)
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        for name in entries:  # a listed entry already back (or never moved) is in the root, not here
            if os.path.exists(os.path.join(self.replaced, name)):
                os.rename(os.path.join(self.replaced, name), os.path.join(self.root, name))
        shutil.rmtree(self.replaced)

    def recover(self) -> None:
        """Before a run (rank 0, lock held): finish an interrupted overwrite as its journal says, refuse a folder
        composer-imp did not make (:meth:`check_ownership`), and remove temporary files of interrupted writes."""
        self.settle_replaced()  # only a folder of ours holds .composer-imp-replaced/journal.json
        self.check_ownership()
        for name in self.layout_entries():
            for folder, _, files in os.walk(os.path.join(self.root, name)):
                for file in files:
                    if _TEMPORARY.search(file):
                        os.remove(os.path.join(folder, file))
        for file in os.listdir(self.root) if os.path.isdir(self.root) else []:
            if _TEMPORARY.search(file) and _LAYOUT.match(_TEMPORARY.sub('', file)):
                os.remove(os.path.join(self.root, file))

    # ---- state -------------------------------------------------------------------------------
    def is_done(self, level: int) -> bool:
        return all(os.path.isfile(p) for p in (self.level_json(level), self.mask(level), self.weights(level)))

    def _checksummed(self, level: int) -> dict[str, str]:
        """The files a level's manifest covers: its mask and weights, and for level 0 the rewind point."""
        files = {'mask.pt': self.mask(level), 'weights.pt': self.weights(level)}
        return {**files, 'rewind.pt': self.rewind} if level == 0 else files

    def manifest(self, level: int) -> dict[str, str]:
        return {name: sha256(path) for name, path in self._checksummed(level).items()}

    def problems(self, level: int, files: bool = True) -> tuple[Optional[dict], list[str]]:
        """Level ``level``'s row as read, and what is wrong with it and (``files``) the files its manifest names
        (empty when every checksum matches). Rows written before 0.3 carry no ``row_sha256``: their files are still
        checked."""
        try:
            row = self.read_row(level)
            recorded = row['manifest']
        except (ValueError, KeyError, OSError, TypeError):
            return None, ['level.json (unreadable or without a manifest)']
        bad = [] if row.get('row_sha256') in (None, row_digest(row)) else ['level.json (edited)']
        if not files:
            return row, bad
        paths = self._checksummed(level)
        return row, bad + [name for name, digest in recorded.items()
                           if not os.path.isfile(paths[name]) or sha256(paths[name]) != digest]

    def verify(self, level: int) -> bool:
        """True if level ``level`` is done and its artifacts match their checksums; else its files are
        removed (with a warning if they were corrupted) so the level is trained again."""
        if not self.is_done(level):
            return False
        _, bad = self.problems(level)
        if not bad:
            return True
        later = [l for l in self.levels_done() if l > level]
        warnings.warn(f'{self.level_dir(level)}: {", ".join(bad)} truncated or corrupted (checksum mismatch); '
                      f'level {level} will be trained again' + (f', and the levels after it ({later[0]}-{later[-1]}), '
                                                                 'whose masks came from its weights' if later else '') + '.')
        for l in [level, *later]:
            self.forget(l)
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

    # ---- readers -------------------------------------------------------------------------------
    def read_config(self) -> dict:
        """``config.yaml`` as a dict; a missing, unreadable or non-mapping file is an error naming it."""
        if not os.path.isfile(self.config):
            raise FileNotFoundError(f'{self.root} is not an IMP run: {self.config} is missing (point at the '
                                    'save_folder of a run made by run.py or find_ticket).')
        try:
            config = OmegaConf.to_container(OmegaConf.load(self.config), resolve=True)
        except Exception as e:  # YAML syntax errors come in several types
            raise ValueError(f'{self.config} is not a readable run config ({type(e).__name__}: '
                             f'{str(e).splitlines()[0] if str(e) else ""}). It was changed after the run wrote it; '
                             'restore it, or start over with overwrite.') from None
        if not isinstance(config, dict):
            raise ValueError(f'{self.config} is not a run config: it holds a {type(config).__name__}, not a mapping '
                             'of keys. Restore it, or start over with overwrite.')
        return config

    def recorded_seed(self) -> int:
        """The seed the run in this folder was made with (``config.yaml``)."""
        return int(self.read_config().get('seed', 17))

    def recorded_data_seed(self) -> int:
        """The data-order seed the run was made with (a replicate's index; 0 for a single run)."""
        return int(self.read_config().get('data_seed', 0))

    def recorded_imp(self) -> dict:
        """The IMP settings the run was made with (``config.yaml``'s ``algorithms.IMP`` or ``AdaptiveIMP``, or the
        ``imp`` block of runs made before 0.3). Runs made before the rewinding options existed restored the
        optimizer and replayed the data order (:data:`LEGACY_REWINDING`)."""
        config = self.read_config()
        algorithms = config.get('algorithms') or {}
        name = next((n for n in IMP_NAMES if n in algorithms), None)
        imp = {'name': name, **(algorithms[name] or {})} if name and 'imp' not in config else config.get('imp') or {}
        return {**imp, **{k: v for k, v in LEGACY_REWINDING.items() if k not in imp}}

    def read_row(self, level: int) -> dict:
        with open(self.level_json(level)) as f:
            return json.load(f)

    def verified_row(self, level: int, files: bool = True) -> dict:
        """Level ``level``'s row, refused (:class:`CorruptArtifact`, naming the file) unless ``level.json`` and
        (``files``) the files its manifest names match their checksums. ``files=False`` for a reader that loads those
        files through :meth:`verified_load`, which checks each as it reads it."""
        row, bad = self.problems(level, files)
        if bad:
            raise CorruptArtifact(f'{self.level_dir(level)}: {", ".join(bad)} does not match the checksum recorded when '
                                  f'level {level} finished (changed or truncated since). Nothing is computed from it: '
                                  'run the training command again (it retrains that level), then analyse again.')
        return row

    def check_complete(self) -> list[int]:
        """The finished levels 0, 1, ...; a level after them that has a ``level.json`` but lacks its files is refused
        by name (an analysis must not silently stop short of levels that exist)."""
        done = self.levels_done()
        gap = len(done)
        found = sorted(int(n[6:]) for n in os.listdir(self.root) if re.fullmatch(r'level_\d{2,}', n))
        later = [l for l in found if l > gap and os.path.isfile(self.level_json(l))]
        if later or os.path.isfile(self.level_json(gap)):
            missing = [os.path.basename(p) for p in (self.mask(gap), self.weights(gap), self.level_json(gap))
                       if not os.path.isfile(p)]
            raise CorruptArtifact(f'{self.level_dir(gap)} lacks {", ".join(missing)}' +
                                  (f' while level(s) {later} after it have finished' if later else ' (its level.json '
                                   'says it finished)') + ': the run folder was changed. Run the training command '
                                  'again (it retrains that level and the ones after it).')
        return done

    def verified_load(self, level: int, name: str, digest: str) -> Any:
        """``torch.load`` of level ``level``'s file ``name`` (``'weights.pt'``, ``'mask.pt'``) from bytes whose
        SHA-256 is checked against ``digest`` first (no second read between the check and the load)."""
        path = self._checksummed(level)[name]
        try:
            with open(path, 'rb') as f:
                data = f.read()
        except OSError as e:
            raise CorruptArtifact(f'{path} cannot be read ({e.strerror or e}); run the training command again.') from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise CorruptArtifact(f'{path} does not match the checksum in {self.level_json(level)} (changed or '
                                  'truncated since the level finished). Nothing is computed from it: run the training '
                                  'command again (it retrains that level), then analyse again.')
        return torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)

    def verified_weights(self, level: int) -> dict[str, torch.Tensor]:
        """Level ``level``'s trained weights, checked against its verified manifest."""
        return self.verified_load(level, 'weights.pt', self.verified_row(level, files=False)['manifest']['weights.pt'])

    def verified_mask(self, level: int) -> dict[str, torch.Tensor]:
        """Level ``level``'s mask, checked against its verified manifest."""
        return self.verified_load(level, 'mask.pt', self.verified_row(level, files=False)['manifest']['mask.pt'])

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

    def write_row(self, row: dict) -> None:
        """Write ``level.json`` (last: it marks the level done) with the manifest and the row's own digest."""
        row = {**row, 'manifest': self.manifest(row['level'])}
        row['row_sha256'] = row_digest(row)
        atomic_write_text(json.dumps(row, indent=2), self.level_json(row['level']))

    def write_config(self, config: dict) -> None:
        atomic_write_text(OmegaConf.to_yaml(OmegaConf.create(config)), self.config)
