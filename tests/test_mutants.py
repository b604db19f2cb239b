"""The mutant harness (tests/mutants.py, ./scripts/mutants) cannot rot: every mutant still applies to the tree
as it stands, one that no longer does fails loudly by name, and one fixed mutant applied to a scratch copy is
killed there by a named test that passes on the unmutated copy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.mutants import (
    MUTANTS,
    ROOT,
    Mutant,
    MutantDoesNotApplyError,
    apply,
    check_imports_the_copy,
    mutated,
    run_tests,
    scratch_copy,
)

FIXED = next(mutant for mutant in MUTANTS if mutant.id == "oom-is-passing-state")
KILLER = "tests/test_failures.py::test_a_raw_reply_is_named_by_its_code"


def test_there_are_enough_mutants_each_named_once() -> None:
    assert len(MUTANTS) >= 15
    assert len(MUTANTS) == len({mutant.id for mutant in MUTANTS})


@pytest.mark.parametrize("mutant", MUTANTS, ids=[mutant.id for mutant in MUTANTS])
def test_every_mutant_applies_to_the_tree_as_it_stands(mutant: Mutant) -> None:
    changed = mutated(mutant, ROOT)
    assert changed != (ROOT / mutant.file).read_text()
    assert mutant.tests, f"{mutant.id} names no test of its subject"


def test_a_mutant_whose_code_moved_fails_loudly_by_name(tmp_path: Path) -> None:
    moved = dataclasses.replace(FIXED, original="text that is nowhere in the file")
    (tmp_path / Path(FIXED.file).parent).mkdir(parents=True)
    (tmp_path / FIXED.file).write_text((ROOT / FIXED.file).read_text())
    with pytest.raises(MutantDoesNotApplyError, match=f"mutant {FIXED.id}: .* 0 times in {FIXED.file}"):
        apply(moved, tmp_path)


def test_a_fixed_mutant_is_killed_by_its_test_in_a_scratch_copy(tmp_path: Path) -> None:
    root = scratch_copy(tmp_path / "tree")
    check_imports_the_copy(root)
    failed, _ = run_tests(root, [KILLER])
    assert failed is None, f"{KILLER} fails on the unmutated copy"
    apply(FIXED, root)
    assert (ROOT / FIXED.file).read_text().count(FIXED.original) == 1  # the working tree is untouched
    failed, _ = run_tests(root, [KILLER])
    assert failed is not None and failed.startswith(KILLER), failed
