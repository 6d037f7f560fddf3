"""Mutation testing of the security-critical modules, one module at a time (``./dev.sh mutate``).

mutmut reads its settings from ``pyproject.toml`` in the directory it runs in and has no
per-module test selection, so each module is staged in ``build/mutate/<module>/``: a copy of the
source packages and tests, with a ``pyproject.toml`` whose ``[tool.mutmut]`` is the repository's
shared settings plus ``only_mutate`` = that module and ``pytest_add_cli_args_test_selection`` =
its small, fast test set from ``[tool.toneguard.mutate.modules]``. Keeping the set small is the
point: the machine is shared, and a mutant is only worth running against tests that are quick and
decisive. The staging copy also keeps the worktree clean (mutmut writes ``mutants/`` beside the
config it reads).

Usage: ``python scripts/mutate.py [--keep] [--max-children N] [--ref COMMIT] [--only GLOB]
[MODULE ...]`` where MODULE is a path from the table (default: all, in table order). Reviewed
equivalent survivors and hand-written mutants (for what mutmut skips) come from the same table.
Prints the verdicts per module and the diff of every unexplained survivor; exits 1 if there is
one. docs/mutation.md has the scores and the review of every survivor.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "build" / "mutate"
# What a staged copy needs: the packages mutmut copies into mutants/, the tests, config files.
COPY = ("dsp", "proxy", "gateway", "loadtest", "tests", "config")
# mutmut verdicts that mean "no test noticed this mutant". A timeout or a segfault counts as
# noticed: the mutant made a test hang or crash (mutmut's timeouts are CPU-time limits).
BAD = ("survived", "no tests", "suspicious", "not checked")


class MutateError(RuntimeError):
    """The mutation run could not be set up or did not finish."""


@dataclass(frozen=True)
class Equivalent:
    """A reviewed surviving mutant: the module and the mutated line as mutmut writes it.

    Keyed by the line's text rather than mutmut's numbered name, because the numbers shift when
    the function changes; a changed line no longer matches and comes back for review. Where the
    mutated line alone says too little (a call split over lines: ``None)``), ``removed`` is the
    original line too.
    """

    module: str
    line: str
    why: str
    removed: str = ""

    def matches(self, module: str, found: Survivor) -> bool:
        return self.module == module and self.line == found.added and (
            not self.removed or self.removed == found.removed)


@dataclass(frozen=True)
class Manual:
    """A mutant mutmut cannot make (it skips decorated functions, e.g. every FastAPI endpoint):
    the ``occurrence``-th line of ``module`` whose text contains ``line`` gets ``line`` replaced by
    ``replace`` in a plain copy of the tree, and the module's tests must then fail."""

    module: str
    line: str
    replace: str
    occurrence: int
    why: str
    equivalent: str = ""  # why it is expected to survive, if it is


@dataclass
class Survivor:
    module: str
    name: str
    status: str
    lineno: int | None
    removed: str
    added: str
    diff: str


@dataclass(frozen=True)
class Table:
    shared: dict[str, object]
    modules: dict[str, list[str]]
    only: dict[str, list[str]]  # module -> mutant name globs (its functions worth the CPU)
    equivalent: list[Equivalent]
    manual: list[Manual]


def load_table(pyproject: Path) -> Table:
    data = tomllib.loads(pyproject.read_text())
    try:
        shared = dict(data["tool"]["mutmut"])
        mutate = data["tool"]["toneguard"]["mutate"]
        modules = {str(k): list(v) for k, v in dict(mutate["modules"]).items()}
        only = {str(k): list(v) for k, v in dict(mutate.get("only", {})).items()}
        equivalent = [Equivalent(e["module"], e["line"].strip(), e["why"],
                                 e.get("removed", "").strip())
                      for e in mutate.get("equivalent", [])]
        manual = [Manual(e["module"], e["line"], e["replace"], int(e.get("occurrence", 1)),
                         e["why"], e.get("equivalent", "")) for e in mutate.get("manual", [])]
    except KeyError as exc:
        raise MutateError(f"{pyproject}: missing key {exc} (tool.mutmut, "
                          "tool.toneguard.mutate.modules, .equivalent: module, line, why; "
                          ".manual: module, line, replace, why)") from exc
    return Table(shared, modules, only, equivalent, manual)


def _toml_value(value: object) -> str:
    # json spells strings, numbers, booleans and lists the way TOML does for these plain values.
    return json.dumps(value)


def stage(module: str, tests: list[str], shared: dict[str, object], keep: bool,
          ref: str | None) -> Path:
    """Copy the tree (or commit ``ref``) into build/mutate/<module>/, write its pyproject.toml."""
    where = STAGE / module.replace("/", "_").removesuffix(".py")
    if ref:
        where = where.with_name(f"{where.name}@{ref.replace('/', '_')}")
    if where.exists() and not keep:
        shutil.rmtree(where)
    where.mkdir(parents=True, exist_ok=True)
    if ref:
        # Another commit's code and tests (e.g. a branch being merged), with this tree's table.
        names = [n for n in (*COPY, "pyproject.toml")
                 if subprocess.run(["git", "cat-file", "-e", f"{ref}:{n}"], cwd=ROOT,
                                   capture_output=True, check=False).returncode == 0]
        archive = subprocess.run(["git", "archive", ref, *names], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    else:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in COPY:
            src = ROOT / name
            if src.exists():
                # copy2 keeps mtimes, which mutmut compares to decide whether to regenerate.
                shutil.copytree(src, where / name, ignore=ignore, dirs_exist_ok=True,
                                copy_function=shutil.copy2)
        shutil.copy2(ROOT / "pyproject.toml", where / "pyproject.toml")
    base = (where / "pyproject.toml").read_text()
    settings = {**shared, "only_mutate": [module],
                "pytest_add_cli_args_test_selection": tests}
    # Drop the repository's [tool.mutmut] and write the staged one (tomllib cannot write TOML).
    kept: list[str] = []
    skipping = False
    for line in base.splitlines():
        if line.startswith("["):
            skipping = line.strip() == "[tool.mutmut]"
        if not skipping:
            kept.append(line)
    kept.append("\n[tool.mutmut]")
    kept.extend(f"{key} = {_toml_value(value)}" for key, value in settings.items())
    (where / "pyproject.toml").write_text("\n".join(kept) + "\n")
    return where


def run_module(where: Path, max_children: int, names: list[str] | None = None) -> None:
    env = {**os.environ, "PYTHONPATH": str(where)}
    cmd = ["nice", "-n", "15", sys.executable, "-m", "mutmut", "run",
           "--max-children", str(max_children), *(names or [])]
    log = where / "mutmut.log"
    # mutmut redraws a progress line many times a second: keep it in a file, not the terminal.
    with log.open("a") as out:
        done = subprocess.run(cmd, cwd=where, env=env, stdout=out, stderr=subprocess.STDOUT,
                              check=False)
    if done.returncode != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
        raise MutateError(f"mutmut run failed in {where} (exit {done.returncode}), log: {log}")


def results(where: Path) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=where,
                         capture_output=True, text=True, check=True).stdout
    verdicts: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep:
            verdicts[name] = status
    return verdicts


def survivor(where: Path, module: str, name: str, status: str) -> Survivor:
    """The mutant's diff, and where in the (staged) module its changed line is."""
    diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=where,
                          capture_output=True, text=True, check=False).stdout
    lines = diff.splitlines()
    body = [ln for ln in lines if not ln.startswith(("---", "+++", "@@", "#"))]
    removed = next((ln[1:] for ln in body if ln.startswith("-")), "")
    added = next((ln[1:] for ln in body if ln.startswith("+")), "")
    # mutmut's diff is function-relative; find the function's first line, then the removed line.
    # Compared stripped: mutmut dedents methods in its diff.
    lineno = None
    source = [ln.strip() for ln in (where / module).read_text().splitlines()]
    head = next((ln[1:] for ln in body if ln[:1] == " " or ln[:1] == "-"), "")
    try:
        start = source.index(head.strip())
        lineno = source.index(removed.strip(), start) + 1
    except ValueError:
        pass
    return Survivor(module, name, status, lineno, removed.strip(), added.strip(), diff)


def run_manual(where: Path, mutant: Manual, tests: list[str]) -> tuple[int, str]:
    """Apply one hand-written mutant to a plain copy of the tree; returns (line, verdict)."""
    plain = where / "manual"
    if plain.exists():
        shutil.rmtree(plain)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in (*COPY, "pyproject.toml"):
        src = where / name
        if src.is_dir():
            shutil.copytree(src, plain / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, plain / name)
    target = plain / mutant.module  # the staged module: the working tree's or the ref's
    lines = target.read_text().splitlines(keepends=True)
    hits = [i for i, ln in enumerate(lines) if mutant.line in ln]
    if len(hits) < mutant.occurrence:
        raise MutateError(f"manual mutant: {mutant.module} has {len(hits)} line(s) with "
                          f"{mutant.line!r}, wanted occurrence {mutant.occurrence}: update "
                          "[[tool.toneguard.mutate.manual]]")
    index = hits[mutant.occurrence - 1]
    lines[index] = lines[index].replace(mutant.line, mutant.replace, 1)
    target.write_text("".join(lines))
    env = {**os.environ, "PYTHONPATH": str(plain)}
    done = subprocess.run(["nice", "-n", "15", sys.executable, "-m", "pytest", "-x", "-q",
                           "-p", "no:cacheprovider", "--timeout=60", *tests], cwd=plain, env=env,
                          capture_output=True, text=True, check=False)
    # 1: a test failed. Anything else (collection error, usage) is not a kill by a test.
    verdict = {0: "survived", 1: "killed"}.get(done.returncode, f"error {done.returncode}")
    return index + 1, verdict


def unreached(where: Path, module: str) -> list[str]:
    """Functions mutmut leaves alone: decorated ones (other than staticmethod/classmethod)."""
    names = []
    for node in ast.walk(ast.parse((where / module).read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
                not (isinstance(d, ast.Name) and d.id in ("staticmethod", "classmethod"))
                for d in node.decorator_list):
            names.append(f"{node.name}:{node.lineno}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="module paths (default: all in the table)")
    parser.add_argument("--keep", action="store_true",
                        help="reuse build/mutate/<module>: mutmut resumes")
    parser.add_argument("--max-children", type=int, default=1,
                        help="parallel mutant workers (default 1: the machine is shared)")
    parser.add_argument("--only", action="append", default=[], metavar="GLOB",
                        help="mutant name glob (repeatable), instead of the table's for the module")
    parser.add_argument("--ref", help="mutate this commit's code and tests (git archive) "
                        "instead of the working tree; the table is still this tree's")
    args = parser.parse_args(argv)
    config = load_table(ROOT / "pyproject.toml")
    table, equivalent = config.modules, config.equivalent
    unknown = [m for m in args.modules if m not in table]
    if unknown:
        parser.error(f"not in [tool.toneguard.mutate.modules]: {', '.join(unknown)}")
    summary: list[tuple[str, Counter[str]]] = []
    unexplained: list[Survivor] = []
    for module in args.modules or list(table):
        print(f"== {module}: tests {' '.join(table[module])}", flush=True)
        where = stage(module, table[module], config.shared, args.keep, args.ref)
        skipped = unreached(where, module)
        if skipped:
            print(f"not mutated by mutmut (decorated): {', '.join(skipped)}")
        globs = args.only or config.only.get(module, [])
        if globs:
            print(f"only mutants matching: {' '.join(globs)}")
        run_module(where, args.max_children, globs)
        verdicts = {name: status for name, status in results(where).items()
                    if not globs or any(fnmatch.fnmatchcase(name, g) for g in globs)}
        stale = [name for name, status in verdicts.items() if status in BAD]
        if args.keep and stale:
            # mutmut keeps earlier verdicts even when the tests changed: re-run the survivors.
            run_module(where, args.max_children, stale)
            latest = results(where)  # once: each call reads every mutant's verdict file
            verdicts = {name: latest[name] for name in verdicts}
        counts: Counter[str] = Counter()
        for name, status in sorted(verdicts.items()):
            if status not in BAD:
                counts[status] += 1
                continue
            found = survivor(where, module, name, status)
            why = next((e.why for e in equivalent if e.matches(module, found)), None)
            if why is not None and status == "survived":
                counts["equivalent"] += 1
                print(f"equivalent {module}:{found.lineno} {found.added}\n    because {why}")
            else:
                counts[status] += 1
                unexplained.append(found)
        for mutant in (m for m in config.manual if m.module == module):
            lineno, verdict = run_manual(where, mutant, table[module])
            if verdict == "survived" and mutant.equivalent:
                verdict = "equivalent"
            counts[f"manual {verdict}"] += 1
            print(f"manual {module}:{lineno} {mutant.line.strip()} -> {mutant.replace.strip()}: "
                  f"{verdict}")
            if verdict not in ("killed", "equivalent"):
                unexplained.append(Survivor(module, "manual", verdict, lineno, mutant.line,
                                            mutant.replace, mutant.why))
        summary.append((module, counts))
    for found in unexplained:
        print(f"{found.status.upper()} {found.module}:{found.lineno} {found.name}")
        print(found.diff)
    print(f"{'module':<34} {'mutants':>7} {'killed':>7} {'timeout':>7} {'equiv':>5} "
          f"{'survived':>8} {'other':>5} {'score':>6} {'manual':>7}")
    for module, counts in summary:
        manual = sum(n for k, n in counts.items() if k.startswith("manual "))
        total = sum(counts.values()) - manual
        caught = counts["killed"] + counts["timeout"] + counts["segfault"]
        other = total - caught - counts["equivalent"] - counts["survived"]
        # Score over the mutants a test could kill: equivalent ones change no behaviour.
        killable = total - counts["equivalent"]
        score = 100.0 * caught / killable if killable else 100.0
        hand = (f"{counts['manual killed']}+{counts['manual equivalent']}eq/{manual}"
                if manual else "-")
        print(f"{module:<34} {total:>7} {counts['killed']:>7} {counts['timeout']:>7} "
              f"{counts['equivalent']:>5} {counts['survived']:>8} {other:>5} {score:>5.1f}% "
              f"{hand:>7}")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
