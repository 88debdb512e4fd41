"""Regenerate the support matrix in docs/support-matrix.md from the matrix test's results.

    .venv/bin/python scripts/gen_support_matrix.py          # run tests/comfy/test_matrix.py, then rewrite the block
    .venv/bin/python scripts/gen_support_matrix.py --check  # compare the doc with tests/out/matrix.json only

The block lies between the markers in tests/support/matrix_families.py; everything else in the doc is left
as it is. tests/comfy/test_matrix.py::test_support_matrix_doc_matches_results fails while the doc is stale.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_FILE = ROOT / "tests" / "out" / "matrix.json"
sys.path.insert(0, str(ROOT / "tests" / "support"))
import matrix_families  # noqa: E402  (tests/support: the rows, the markers and the doc's path)

DOC = ROOT / matrix_families.DOC


def render(results: dict) -> str:
    import comfy_env

    pack = comfy_env.load_pack()  # the method registry reads layout data through the pack, as the tests do
    from methods_registry import METHODS

    COMFY_LAYOUTS = pack.cache_core.layout.COMFY_LAYOUTS

    return matrix_families.render(results, {k: m.name for k, m in METHODS.items()},
                                  matrix_families.layout_columns(COMFY_LAYOUTS))


def run_matrix() -> int:
    """Run the matrix test (without the doc comparison); it writes tests/out/matrix.json when complete."""
    cmd = [sys.executable, "-m", "pytest", "tests/comfy/test_matrix.py", "-q",
           "--deselect", "tests/comfy/test_matrix.py::test_support_matrix_doc_matches_results"]
    return subprocess.call(cmd, cwd=ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help=f"only compare {matrix_families.DOC} with the last results")
    args = ap.parse_args()
    started = time.time()
    if not args.check:
        rc = run_matrix()
        if not RESULTS_FILE.exists() or RESULTS_FILE.stat().st_mtime < started:
            print(f"[dit-cache] the matrix test wrote no results (pytest exit {rc})", file=sys.stderr)
            return 1
        if rc != 0:
            print(f"[dit-cache] matrix cells failed (pytest exit {rc}); the table shows them as FAILS",
                  file=sys.stderr)
    if not RESULTS_FILE.exists():
        print(f"[dit-cache] {RESULTS_FILE} missing: run without --check first", file=sys.stderr)
        return 1
    block = render(json.loads(RESULTS_FILE.read_text()))
    text = DOC.read_text()
    if args.check:
        same = matrix_families.doc_block(text) == block
        print(f"[dit-cache] {matrix_families.DOC} support matrix " + ("matches the results" if same else "is STALE"))
        return 0 if same else 1
    DOC.write_text(matrix_families.replace_block(text, block))
    print(f"[dit-cache] {matrix_families.DOC} support matrix updated from {RESULTS_FILE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
