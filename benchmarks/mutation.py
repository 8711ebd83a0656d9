"""Mutation testing of the math modules: plant one bug at a time, run the tests that should catch it.

    OMP_NUM_THREADS=1 python benchmarks/mutation.py                     # every module; JSON summary on stdout
    python benchmarks/mutation.py --modules objectives --list           # the mutants, without running anything
    python benchmarks/mutation.py --rev 4e38d8e > before.json           # the code and tests of a commit
    python benchmarks/mutation.py --rescore a.json b.json                # runs merged, survivors classified again

The repository's cvae/, tests/ and pyproject.toml (of the working tree, or of the commit ``--rev``, by ``git
archive``) are copied to a temporary directory, and every mutant is written into that copy's module, never into the
working tree; the copy's module is restored after each mutant and the whole copy removed on any exit (try/finally).

A mutant is one change to the module's abstract syntax tree, spliced into the source at the node's position:

    operator     + <-> -, * <-> /, ** -> *, // -> /       comparison   < <-> <=, > <-> >=, == <-> !=, is <-> is not
    dropped term a + b -> a, a + b -> b, a - b -> a, a * b -> a, a * b -> b, a / b -> a, -a -> a, not a -> a
    constant     an int c -> c + 1, a float c -> 2 c (0.0 -> 1.0), True <-> False
    call         x.mean <-> x.sum, min <-> max, exp <-> log, log1p -> log, expm1 -> exp; clamp(min=) -> clamp(max=);
                 a generator=, replacement= or unbiased= argument dropped
    branch       if c -> if not c, a if c else b -> a if not c else b,  and <-> or

within the functions of the math each module lists (TARGETS). Left alone: docstrings and strings, annotations,
input validation (an ``if`` whose body is a ``raise``, the ``raise`` itself, calls of ``check_*`` / ``_check_*``),
progress bars, and the constants that only size chunks of work. Each mutant runs the module's tests (fast files
first) as ``pytest -x -q -k DESELECT`` in a process forked from this one (torch is imported once), under a timeout of
TIMEOUT_FACTOR x the unmutated run plus TIMEOUT_SLACK s. A mutant is killed when a test fails or errs (or the
run times out), and survives when all pass. EQUIVALENT lists the survivors that no test can kill, with the reason.

The JSON: per module and in total the mutants, killed, survived and equivalent, and every survivor's place.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_FACTOR, TIMEOUT_SLACK = 3.0, 20.0
DESELECT = "not z2"  # test_estimators.py's 2-d latent repeats its 1-d cases at 3 times the cost

# module -> (the functions (qualified names) whose code is mutated, None for every function; module-level constants
# mutated; the test files, fast first)
FAST_MODEL_TESTS = ["tests/test_conditional_vae.py"]
TARGETS: dict[str, tuple[set[str] | None, bool, list[str]]] = {
    "cvae/distributions.py": (None, True, ["tests/test_distributions.py", "tests/test_sample_metrics.py",
                                           *FAST_MODEL_TESTS, "tests/test_remedies.py", "tests/test_estimators.py"]),
    "cvae/likelihoods.py": ({"_even_bernoulli_numbers", "_polynomial", "continuous_bernoulli_log_normalizer",
                             "continuous_bernoulli_mean", "continuous_bernoulli_icdf", "Bernoulli.log_prob",
                             "Bernoulli.mean", "Bernoulli.sample", "Bernoulli._in_support", "Gaussian.num_params",
                             "Gaussian.loc_scale", "Gaussian.log_prob", "Gaussian.mean", "Gaussian.sample",
                             "Gaussian._in_support", "ContinuousBernoulli.logits", "ContinuousBernoulli.log_prob",
                             "ContinuousBernoulli.mean", "ContinuousBernoulli.sample",
                             "ContinuousBernoulli._in_support",
                             "Laplace.num_params", "Laplace.loc_scale", "Laplace.log_prob", "Laplace.mean",
                             "Laplace.sample", "Laplace._in_support", "Categorical.logits", "Categorical.log_prob",
                             "Categorical.mean", "Categorical.sample", "Categorical.features",
                             "Categorical.feature_dim", "Categorical._in_support"},
                            True, ["tests/test_likelihoods.py", *FAST_MODEL_TESTS]),
    "cvae/objectives.py": (None, False, ["tests/test_remedies.py", "tests/test_sample_metrics.py", *FAST_MODEL_TESTS,
                                         "tests/test_training.py", "tests/test_estimators.py"]),
    "cvae/estimators.py": (None, False, ["tests/test_estimator_chunks.py", "tests/test_true_likelihood.py",
                                         *FAST_MODEL_TESTS, "tests/test_estimators.py"]),
    "cvae/paper/true_likelihood.py": (None, True, ["tests/test_true_likelihood.py"]),
    "cvae/paper/sample_metrics.py": (None, True, ["tests/test_sample_metrics.py"]),
    "cvae/settings.py": ({"TrainingSettings.kl_weight_at", "TrainingSettings.lr_at"}, False,
                         ["tests/test_training.py", "tests/test_settings.py", *FAST_MODEL_TESTS]),
}
# module-level constants mutated (where the module's flag is set); the others only size chunks of work or name things
CONSTANTS = {"LOG_2PI", "MIN_SCALE", "LOG_2", "_LOG_NORMALIZER_TAYLOR_BELOW", "_MEAN_TAYLOR_BELOW",
             "_SAMPLE_UNIFORM_BELOW", "_BERNOULLI", "_LOG_NORMALIZER_SERIES", "_MEAN_SERIES", "Z_SEED_OFFSET",
             "ACTIVE_THRESHOLD"}

# survivors that no test can kill: (module, function, mutant's description) -> why
_SEED = "another seed formula that keeps every stream apart (blocks, seeds a few apart, b and z): the same " \
        "distribution of draws"
_SHOWN = "decides only whether a progress bar is shown"
_CHUNKS = "sizes the chunks of samples or when their partial results are folded: the same sums, up to rounding order"
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("cvae/distributions.py", "GaussianMixture.rsample", "Add -> Sub: loc + scale * eps"):
        "eps ~ N(0, I) is symmetric: loc - scale eps has the same distribution, reparameterized alike",
    ("cvae/likelihoods.py", "Gaussian.sample", "Add -> Sub: loc + scale * eps"):
        "eps ~ N(0, I) is symmetric: loc - scale eps has the same distribution",
    ("cvae/likelihoods.py", "_even_bernoulli_numbers", "constant 1 -> 2 in 2 * count + 1"):
        "also computes B_(2 count + 1) (= 0), which the slice of the even ones drops",
    ("cvae/likelihoods.py", "<module>", "constant 12 -> 13 in _even_bernoulli_numbers(12)"):
        "one more term of the mean's series, B_26 l^25 / 26! < 4e-21 for |l| < 1: below float64 rounding",
    ("cvae/likelihoods.py", "<module>", "constant 5 -> 6 in :5"):
        "one more term of log C's series, below 2e-19 for |l| < 0.1: below float64 rounding",
    ("cvae/likelihoods.py", "<module>", "constant 0.1 -> 0.2"):
        "log C's series (to l^10) up to |l| < 0.2: within 1e-15 relative of the exact value, as the closed form is",
    ("cvae/likelihoods.py", "<module>", "constant 1e-12 -> 2e-12"):
        "the inverse CDF's first-order branch up to |l| < 2e-12: its error O(l^2) ~ 1e-24 is below rounding",
    ("cvae/likelihoods.py", "continuous_bernoulli_log_normalizer", "Lt -> LtE: a < _LOG_NORMALIZER_TAYLOR_BELOW"):
        "at |l| = 0.1 exactly the series and the closed form agree to rounding",
    ("cvae/likelihoods.py", "continuous_bernoulli_mean", "Lt -> LtE: logits.abs() < _MEAN_TAYLOR_BELOW"):
        "at |l| = 1 exactly the series and the closed form agree to rounding",
    ("cvae/likelihoods.py", "continuous_bernoulli_icdf", "Lt -> LtE: a < _SAMPLE_UNIFORM_BELOW"):
        "at |l| = 1e-12 exactly both branches agree to rounding",
    ("cvae/likelihoods.py", "continuous_bernoulli_icdf", "Gt -> GtE: logits > 0"):
        "at l = 0 the branch for |l| < 1e-12 is taken, whichever side l = 0 counts on",
    ("cvae/likelihoods.py", "continuous_bernoulli_icdf",
     "constant 1.0 -> 2.0 in torch.where(tiny, near_uniform, exact).clamp(0.0, 1.0)"):
        "F^-1(u) <= 1 for u in [0, 1) in exact arithmetic: the upper clamp only guards rounding",
    ("cvae/likelihoods.py", "Laplace.sample", "Lt -> LtE: u < 0.5"):
        "at u = 1/2 both tails give F^-1(u) = mu",
    ("cvae/likelihoods.py", "Laplace.sample", "Mult -> Div: scale * sign"):
        "sign is +1 or -1: scale / sign = scale sign",
    ("cvae/objectives.py", "elbo", "Gt -> GtE: aux_weight > 0 #1"):
        "at aux_weight = 0 it adds 0 x a finite log-likelihood",
    ("cvae/objectives.py", "mixture_expected_log_likelihood", "dropped USub: -2"):
        "z is (L, N, K, z_dim) by construction: dimension 2 is dimension -2",
    ("cvae/objectives.py", "mixture_expected_log_likelihood", "dropped USub: -1"):
        "the prior's weights are (N, K) by construction: dimension 1 is dimension -1",
    ("cvae/estimators.py", "_reduce_samples", "Mult -> Div: x.shape[0] * num_samples"): _SHOWN,
    ("cvae/estimators.py", "_reduce_samples", "dropped right of Mult: x.shape[0] * num_samples"): _SHOWN,
    ("cvae/estimators.py", "_reduce_samples", "dropped left of Mult: x.shape[0] * num_samples"): _SHOWN,
    ("cvae/estimators.py", "_reduce_samples", "constant 0 -> 1 in x.shape[0]"): _SHOWN,
    ("cvae/estimators.py", "_reduce_samples", "constant True -> False"): _SHOWN,
    ("cvae/estimators.py", "cll_monte_carlo", "constant True -> False"): _SHOWN,
    ("cvae/estimators.py", "cll_importance", "constant True -> False"): _SHOWN,
    ("cvae/estimators.py", "negative_elbo", "constant True -> False"): _SHOWN,
    ("cvae/estimators.py", "_reduce_samples", "Mult -> Div: stream.size * num_samples"): _SHOWN,
    ("cvae/estimators.py", "_reduce_samples", "dropped right of Mult: stream.size * num_samples"): _SHOWN,
    ("cvae/estimators.py", "_reduce_samples", "dropped left of Mult: stream.size * num_samples"): _SHOWN,
    ("cvae/estimators.py", "_reduce_blocks", "constant 1 -> 2 in max(1, MAX_ROWS // xb.shape[0])"): _CHUNKS,
    ("cvae/estimators.py", "_reduce_blocks", "constant 0 -> 1 in xb.shape[0]"): _CHUNKS,
    ("cvae/estimators.py", "_reduce_blocks", "negated condition: len(partial) * xb.shape[0] >= PENDING_ELEMENTS"):
        _CHUNKS,
    ("cvae/estimators.py", "_reduce_blocks", "GtE -> Gt: len(partial) * xb.shape[0] >= PENDING_ELEMENTS"): _CHUNKS,
    ("cvae/estimators.py", "_reduce_blocks", "Mult -> Div: len(partial) * xb.shape[0]"): _CHUNKS,
    ("cvae/estimators.py", "_reduce_blocks", "dropped right of Mult: len(partial) * xb.shape[0]"): _CHUNKS,
    ("cvae/estimators.py", "_reduce_blocks", "dropped left of Mult: len(partial) * xb.shape[0]"): _CHUNKS,
    ("cvae/estimators.py", "_reduce_blocks", "constant 0 -> 1 in xb.shape[0] #1"): _CHUNKS,
    ("cvae/estimators.py", "mean_and_sem", "Gt -> GtE: n > 1"):
        "for n = 1 the unbiased standard deviation of one value is NaN, as the other branch's",
    ("cvae/estimators.py", "mean_and_sem", "dropped unbiased=: values.std(unbiased=True)"):
        "torch's standard deviation is the unbiased one by default",
    ("cvae/paper/true_likelihood.py", "<module>", "constant 2 -> 3 in BLOCK_SEED_STRIDE // 2"): _SEED,
    ("cvae/paper/true_likelihood.py", "_block_binarizations", "Add -> Sub: seed + block * BLOCK_SEED_STRIDE"): _SEED,
    ("cvae/paper/true_likelihood.py", "cvae_expected_nll",
     "Add -> Sub: seed + Z_SEED_OFFSET + block * BLOCK_SEED_STRIDE"): _SEED,
    ("cvae/paper/true_likelihood.py", "cvae_expected_nll", "Add -> Sub: seed + Z_SEED_OFFSET"): _SEED,
    ("cvae/paper/true_likelihood.py", "nn_expected_nll", "constant 0 -> 1 in x.new_zeros(0)"):
        "unreachable: an empty y is refused before",
    ("cvae/paper/true_likelihood.py", "cvae_expected_nll", "constant 0 -> 1 in x.new_zeros(0)"):
        "unreachable: an empty y is refused before",
    ("cvae/paper/true_likelihood.py", "cvae_expected_nll", "constant False -> True"): _SHOWN,
    ("cvae/paper/sample_metrics.py", "classifier_scores", "dropped USub: -1 #3"):
        "the tensor is (N, C) by construction: dimension 1 is dimension -1",
    ("cvae/paper/sample_metrics.py", "classifier_scores", "dropped USub: -1 #4"):
        "the tensor is (N, C) by construction: dimension 1 is dimension -1",
    ("cvae/paper/sample_metrics.py", "active_units",
     "dropped unbiased=: posterior_means.double().var(0, unbiased=True)"):
        "torch's variance is the unbiased one by default",
    ("cvae/paper/sample_metrics.py", "active_units", "dropped unbiased=: offsets.double().var(0, unbiased=True)"):
        "torch's variance is the unbiased one by default",
}

SWAP_OPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult,
            ast.FloorDiv: ast.Div}
SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
SWAP_NAMES = {"mean": "sum", "sum": "mean", "min": "max", "max": "min", "exp": "log", "log": "exp", "log1p": "log",
              "expm1": "exp", "amin": "amax", "amax": "amin", "logsumexp": "logcumsumexp"}
DROPPED_KEYWORDS = {"generator", "replacement", "unbiased"}


@dataclass
class Mutant:
    module: str
    function: str
    line: int
    description: str
    source: str  # the whole mutated module

    occurrence: int = 0  # of the same description in the same function, counted from 0

    @property
    def key(self) -> tuple[str, str, str]:
        return self.module, self.function, self.description + (f" #{self.occurrence}" if self.occurrence else "")


def _is_validation(node: ast.AST) -> bool:
    if isinstance(node, ast.Raise | ast.Assert | ast.JoinedStr):
        return True
    if isinstance(node, ast.If) and all(isinstance(s, ast.Raise) for s in node.body) and not node.orelse:
        return True
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return name.startswith(("check", "_check")) or name in ("tqdm", "update", "set_postfix")
    return False


def _splice(lines: list[bytes], node: ast.AST, text: str) -> str:
    """The module with node's source (its byte offsets) replaced by text."""
    start, end = node.lineno - 1, node.end_lineno - 1
    before = b"".join(lines[:start]) + lines[start][:node.col_offset]
    after = lines[end][node.end_col_offset:] + b"".join(lines[end + 1:])
    return (before + text.encode() + after).decode()


def _replacements(node: ast.AST, parent: ast.AST | None) -> list[tuple[str, ast.AST | str]]:
    """(description, the node's replacement: a node or source text) for every mutant of node itself (parent: the
    node it is in, which names the place of a constant)."""
    where = f" in {ast.unparse(parent)[:70]}" if parent is not None and not isinstance(parent, ast.stmt) else ""
    out: list[tuple[str, ast.AST | str]] = []
    if isinstance(node, ast.BinOp):
        op = type(node.op)
        if op in SWAP_OPS:
            new = copy.deepcopy(node)
            new.op = SWAP_OPS[op]()
            out.append((f"{op.__name__} -> {SWAP_OPS[op].__name__}: {ast.unparse(node)}", new))
        if op in (ast.Add, ast.Sub, ast.Mult, ast.Div):
            out.append((f"dropped right of {op.__name__}: {ast.unparse(node)}", node.left))
        if op in (ast.Add, ast.Mult):
            out.append((f"dropped left of {op.__name__}: {ast.unparse(node)}", node.right))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
        out.append((f"dropped {type(node.op).__name__}: {ast.unparse(node)}", node.operand))
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in SWAP_CMP:
                new = copy.deepcopy(node)
                new.ops[i] = SWAP_CMP[type(op)]()
                out.append((f"{type(op).__name__} -> {SWAP_CMP[type(op)].__name__}: {ast.unparse(node)}", new))
    elif isinstance(node, ast.BoolOp):
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        out.append((f"{type(node.op).__name__} -> {type(new.op).__name__}: {ast.unparse(node)}", new))
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        value = node.value
        new_value = (not value) if isinstance(value, bool) else value + 1 if isinstance(value, int) else \
            (2 * value if value else 1.0)
        out.append((f"constant {value!r} -> {new_value!r}{where}", repr(new_value)))
    elif isinstance(node, ast.Attribute) and node.attr in SWAP_NAMES:
        new = copy.deepcopy(node)
        new.attr = SWAP_NAMES[node.attr]
        out.append((f".{node.attr} -> .{new.attr}: {ast.unparse(node)}", new))
    elif isinstance(node, ast.Name) and node.id in ("min", "max"):
        out.append((f"{node.id} -> {SWAP_NAMES[node.id]}{where}", SWAP_NAMES[node.id]))
    elif isinstance(node, ast.Call):
        for i, keyword in enumerate(node.keywords):
            if keyword.arg in DROPPED_KEYWORDS:
                new = copy.deepcopy(node)
                del new.keywords[i]
                out.append((f"dropped {keyword.arg}=: {ast.unparse(node)}", new))
            if keyword.arg in ("min", "max"):
                new = copy.deepcopy(node)
                new.keywords[i].arg = "max" if keyword.arg == "min" else "min"
                out.append((f"{keyword.arg}= -> {new.keywords[i].arg}=: {ast.unparse(node)}", new))
    elif isinstance(node, ast.IfExp):
        new = copy.deepcopy(node)
        new.test = ast.UnaryOp(ast.Not(), new.test)
        out.append((f"negated condition: {ast.unparse(node.test)}", new))
    return out


def mutants(module: str, text: str) -> list[Mutant]:
    """Every mutant of a module's listed functions (and constants), in source order, without duplicates."""
    functions, with_constants, _ = TARGETS[module]
    tree = ast.parse(text)
    lines = text.encode().splitlines(keepends=True)
    found: list[Mutant] = []
    seen = {text}

    occurrences: dict[tuple[str, str], int] = {}

    def add(node: ast.AST, function: str, description: str, replacement: ast.AST | str) -> None:
        replacement_text = replacement if isinstance(replacement, str) else f"({ast.unparse(replacement)})"
        source = _splice(lines, node, replacement_text)
        if source in seen:
            return
        seen.add(source)
        try:
            compile(source, module, "exec")
        except SyntaxError:
            return
        n = occurrences.get((function, description), 0)
        occurrences[function, description] = n + 1
        found.append(Mutant(module, function, node.lineno, description, source, n))

    def visit(node: ast.AST, function: str, parent: ast.AST | None = None) -> None:
        if _is_validation(node):
            return
        if isinstance(node, ast.If):  # branch: the test negated (the whole if statement's test, in place)
            add(node.test, function, f"negated condition: {ast.unparse(node.test)}",
                ast.UnaryOp(ast.Not(), node.test))
        for description, replacement in _replacements(node, parent):
            add(node, function, description, replacement)
        for field, value in ast.iter_fields(node):
            if field in ("annotation", "returns", "decorator_list", "type_comment"):
                continue
            children = value if isinstance(value, list) else [value]
            for child in children:
                if isinstance(child, ast.AST):
                    visit(child, function, node)

    def walk_body(body: list[ast.stmt], prefix: str) -> None:
        for statement in body:
            if isinstance(statement, ast.ClassDef):
                walk_body(statement.body, f"{prefix}{statement.name}.")
            elif isinstance(statement, ast.FunctionDef):
                name = f"{prefix}{statement.name}"
                if (functions is None and not statement.name.startswith(("check", "_check"))) or (
                        functions is not None and name in functions):
                    for i, child in enumerate(statement.body):
                        if i == 0 and isinstance(child, ast.Expr) and isinstance(child.value, ast.Constant):
                            continue  # the docstring
                        visit(child, name)
                    for default in statement.args.defaults + [d for d in statement.args.kw_defaults if d]:
                        visit(default, name)
            elif (with_constants and not prefix and isinstance(statement, ast.Assign | ast.AnnAssign)
                  and any(isinstance(t, ast.Name) and t.id in CONSTANTS
                          for t in (statement.targets if isinstance(statement, ast.Assign) else [statement.target]))):
                visit(statement.value, "<module>")

    walk_body(tree.body, "")
    return found


def _run_tests(copy_root: Path, tests: list[str], log: Path, timeout: float) -> tuple[str, float]:
    """Run ``pytest -x -q tests`` in a forked child in the copy: ("passed" | "failed" | "timeout", seconds)."""
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: fresh imports of cvae from the copy
        code = 3
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.setsid()
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(copy_root)
            sys.path.insert(0, str(copy_root))
            sys.dont_write_bytecode = True
            import pytest
            code = pytest.main([*tests, "-x", "-q", "-p", "no:cacheprovider", "--no-header", "-W", "ignore",
                                "-k", DESELECT])
        finally:
            os._exit(int(code))
    deadline = started + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return ("passed" if code == 0 else "failed"), time.perf_counter() - started
        if time.perf_counter() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return "timeout", time.perf_counter() - started
        time.sleep(0.05)


def _first_failure(log: Path) -> str:
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0]
    return ""


def _make_copy(rev: str | None) -> Path:
    root = Path(tempfile.mkdtemp(prefix="cvae-mutation-"))
    if rev is None:
        for name in ("cvae", "tests"):
            shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(ROOT / "pyproject.toml", root / "pyproject.toml")
    else:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "cvae", "tests", "pyproject.toml"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


def _totals(summary: dict) -> dict:
    keys = ("mutants", "killed", "survived", "equivalent", "timeout")
    total = {k: sum(c[k] for c in summary["modules"].values()) for k in keys}
    killable = total["mutants"] - total["equivalent"]
    total["score"] = round(total["killed"] / killable, 4) if killable else None
    return total


def rescore(summary: dict) -> dict:
    """An earlier run's summary with its survivors and equivalents classified again by EQUIVALENT."""
    entries = summary["survivors"] + summary["equivalent"]
    summary = summary | {"survivors": [], "equivalent": []}
    for counts in summary["modules"].values():
        counts["survived"] = counts["equivalent"] = 0
    for entry in entries:
        entry = {k: v for k, v in entry.items() if k != "why"}
        key = (entry["module"], entry["function"], entry["mutant"])
        counts = summary["modules"][entry["module"]]
        if key in EQUIVALENT:
            counts["equivalent"] += 1
            summary["equivalent"].append(entry | {"why": EQUIVALENT[key]})
        else:
            counts["survived"] += 1
            summary["survivors"].append(entry)
    return summary | {"total": _totals(summary)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modules", nargs="*", help="module names or paths (default: every TARGETS module)")
    parser.add_argument("--rev", help="the commit whose code and tests to mutate (default: the working tree)")
    parser.add_argument("--list", action="store_true", help="print the mutants and stop")
    parser.add_argument("--only", nargs="*", help="run only the mutants of these descriptions' substrings")
    parser.add_argument("--rescore", type=Path, nargs="+",
                        help="earlier runs' JSON (e.g. one per module), merged; survivors classified by EQUIVALENT")
    args = parser.parse_args()
    if args.rescore:
        runs = [json.loads(path.read_text()) for path in args.rescore]
        merged = {"rev": sorted({run["rev"] for run in runs}), "modules": {}, "survivors": [], "equivalent": []}
        for run in runs:
            merged["modules"] |= run["modules"]
            merged["survivors"] += run["survivors"]
            merged["equivalent"] += run["equivalent"]
        print(json.dumps(rescore(merged), indent=1))
        return
    chosen = [m for m in TARGETS if not args.modules or any(a in m for a in args.modules)]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # so that the finally below cleans up
    copy_root = _make_copy(args.rev)
    summary: dict = {"rev": args.rev or "working tree", "modules": {}, "survivors": [], "equivalent": []}
    try:
        import torch  # noqa: F401  (imported once, before the forks)
        for module in chosen:
            path = copy_root / module
            original = path.read_text()
            found = mutants(module, original)
            if args.only:
                found = [m for m in found if any(s in m.description for s in args.only)]
            if args.list:
                for m in found:
                    print(f"{module}:{m.line} {m.function}: {m.description}")
                continue
            tests = [t for t in TARGETS[module][2] if (copy_root / t).exists()]
            log = copy_root / "mutant.log"
            status, baseline = _run_tests(copy_root, tests, log, 3600)
            if status != "passed":
                raise SystemExit(f"{module}: the unmutated tests do not pass:\n{log.read_text()[-3000:]}")
            counts = {"mutants": len(found), "killed": 0, "survived": 0, "equivalent": 0, "timeout": 0,
                      "tests": tests, "unmutated_seconds": round(baseline, 1)}
            print(f"{module}: {len(found)} mutants, tests {baseline:.1f} s unmutated", file=sys.stderr, flush=True)
            for i, m in enumerate(found):
                try:
                    path.write_text(m.source)
                    status, seconds = _run_tests(copy_root, tests, log, TIMEOUT_FACTOR * baseline + TIMEOUT_SLACK)
                finally:
                    path.write_text(original)
                if status == "passed":
                    entry = {"module": module, "function": m.function, "line": m.line, "mutant": m.key[2]}
                    if m.key in EQUIVALENT:
                        counts["equivalent"] += 1
                        summary["equivalent"].append(entry | {"why": EQUIVALENT[m.key]})
                    else:
                        counts["survived"] += 1
                        summary["survivors"].append(entry)
                else:
                    counts["killed"] += 1
                    counts["timeout"] += status == "timeout"
                print(f"  [{i + 1}/{len(found)}] {status:8s} {seconds:5.1f} s  {m.function}:{m.line} {m.description}"
                      f"  {_first_failure(log) if status == 'failed' else ''}", file=sys.stderr, flush=True)
            summary["modules"][module] = counts
    finally:
        shutil.rmtree(copy_root, ignore_errors=True)
    if not args.list:
        summary["total"] = _totals(summary)
        print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
