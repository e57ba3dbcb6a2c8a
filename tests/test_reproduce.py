"""benchmarks/reproduce.py: the reproduction command's plumbing, as a real subprocess on real digits (--smoke)."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = os.path.join(ROOT, 'benchmarks', 'reproduce.py')


def _reproduce(out, *args):
    return subprocess.run([sys.executable, SCRIPT, '--recipe', 'digits', '--smoke', '--out', str(out), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_reproduce_writes_results_with_figures_and_resumes_without_retraining(tmp_path):
    out = tmp_path / 'reproduce'
    results_page = os.path.join(ROOT, 'docs', 'results.md')
    page_before = os.stat(results_page).st_mtime_ns if os.path.isfile(results_page) else None

    # A first invocation that does part of the work (as if interrupted after two stages).
    first = _reproduce(out, '--stages', 'fixed,tau0')
    assert first.returncode == 0, first.stderr[-3000:]
    trained = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(out / '**' / 'level.json'), recursive=True)}
    assert len(trained) == 2 * 3 + 3, sorted(trained)  # 2 seeds x levels 0-2, and the tau0 run's 3 levels
    partial = (out / 'results.md').read_text()
    assert '*Not run yet.*' in partial

    # The full command again: the finished stages are skipped, nothing they trained is touched, the rest runs.
    second = _reproduce(out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert 'stage fixed: already done' in second.stderr and 'stage tau0: already done' in second.stderr
    assert {p: os.stat(p).st_mtime_ns for p in trained} == trained, 'a finished level was retrained'
    assert not [p for p in trained if 'adaptive' in p]
    assert glob.glob(str(out / 'adaptive' / 'replicate_01' / 'level_02' / 'level.json'))
    assert (out / 'landscape' / 'landscape.json').is_file() and (out / 'compute' / 'compute.json').is_file()
    assert glob.glob(str(out / 'fixed' / 'replicate_00' / 'level_*' / 'controls' / 'reinit.json'))

    page = (out / 'results.md').read_text()
    assert '*Not run yet.*' not in page
    for heading in ('## Verdicts', 'Claim 1', 'Claim 2', '## Controls', '## Budget and machine', 'τ = 0', '## Rewinding'):
        assert heading in page, heading
    figures = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', page)
    names = {os.path.basename(f) for f in figures}
    assert {'accuracy_vs_weights_remaining.png', 'fig4_accuracy_vs_compute.png', 'landscape_barriers.png',
            'successive_paths.png', 'pairwise_max_error.png', 'planes.png', 'controls.png', 'rewinding.png'} <= names, names
    for figure in figures:
        path = out / figure
        assert path.is_file() and path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', figure
    book = json.loads((out / 'stages.json').read_text())
    assert len(book['invocations']) == 2 and all(book['stages'][s]['done'] for s in ('fixed', 'landscape', 'compute'))
    assert 'results:' in second.stdout and '**Claim 1' in second.stdout
    # A smoke run never touches the published results page.
    assert (os.stat(results_page).st_mtime_ns if os.path.isfile(results_page) else None) == page_before
