"""Source-tree guard: no eval/exec, no unpickling outside the registry, no shell, no unsafe YAML.

Reads every project module with :mod:`ast` (not grep, so comments, strings and
aliases such as ``from pickle import loads as l`` are handled) and fails naming the
file, line and rule. The trust boundary behind each rule is in SECURITY.md.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("tapas", "contracts", "ingest", "streams", "forecasting", "controller", "dashboard", "simulator", "bench")

#: Modules allowed to deserialise model artifacts: they load only from the operator's registry
#: directory and must verify the artifact's sha256 first (checked below).
REGISTRY_MODULES = ("forecasting/registry.py",)

UNPICKLERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "cPickle.load",
              "cPickle.loads", "dill.load", "dill.loads", "joblib.load", "pandas.read_pickle", "shelve.open",
              "torch.load", "cloudpickle.load", "cloudpickle.loads", "marshal.load", "marshal.loads"}
SHELL_CALLS = {"os.system", "os.popen", "asyncio.create_subprocess_shell", "subprocess.getoutput",
               "subprocess.getstatusoutput", "commands.getoutput"}
SUBPROCESS_CALLS = {"subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call",
                    "subprocess.check_output"}
CODE_EXEC = {"eval", "exec", "builtins.eval", "builtins.exec"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "yaml.SafeLoader", "yaml.CSafeLoader", "BaseLoader",
                     "yaml.BaseLoader"}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}"


class _Scanner(ast.NodeVisitor):
    """Resolves import aliases to dotted names and records calls that break a rule."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.aliases: dict[str, str] = {}
        self.findings: list[Finding] = []

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module:
            for a in node.names:
                self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    def dotted(self, func: ast.expr) -> str:
        parts: list[str] = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            return ""
        parts.append(self.aliases.get(func.id, func.id))
        return ".".join(reversed(parts))

    def flag(self, node: ast.AST, rule: str) -> None:
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), rule))

    def visit_Call(self, node: ast.Call) -> None:
        name = self.dotted(node.func)
        kwargs = {k.arg: k.value for k in node.keywords if k.arg}
        if name in CODE_EXEC:
            self.flag(node, f"{name}() runs code built from data")
        elif name in UNPICKLERS and not self.path.endswith(REGISTRY_MODULES):
            self.flag(node, f"{name}() deserialises arbitrary objects outside the model registry")
        elif name in {"numpy.load"} and _is_true(kwargs.get("allow_pickle")):
            self.flag(node, "numpy.load(allow_pickle=True) unpickles")
        elif name in SHELL_CALLS:
            self.flag(node, f"{name}() runs a shell")
        elif name in SUBPROCESS_CALLS and _is_true(kwargs.get("shell")):
            self.flag(node, f"{name}(shell=True) runs a shell")
        elif name in {"yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"}:
            self.flag(node, f"{name}() constructs arbitrary objects")
        elif name in {"yaml.load", "yaml.load_all"}:
            loader = kwargs.get("Loader", node.args[1] if len(node.args) > 1 else None)
            if loader is None or self.dotted(loader) not in SAFE_YAML_LOADERS:
                self.flag(node, f"{name}() without Loader=yaml.SafeLoader")
        self.generic_visit(node)


def _is_true(node: ast.expr | None) -> bool:
    """True unless the keyword is absent or a literal False (a variable counts as possibly True)."""
    if node is None:
        return False
    return not (isinstance(node, ast.Constant) and not node.value)


def scan_source(source: str, path: str = "<snippet>") -> list[Finding]:
    scanner = _Scanner(path)
    scanner.visit(ast.parse(source, filename=path))
    return scanner.findings


def project_modules() -> list[Path]:
    files: list[Path] = []
    for pkg in PACKAGES:
        files += sorted((REPO / pkg).rglob("*.py"))
    return files


def test_the_guard_scans_the_whole_project() -> None:
    files = project_modules()
    assert len(files) > 20, f"only {len(files)} modules found under {REPO}"
    assert any(f.name == "messages.py" for f in files)


def test_no_project_module_breaks_a_security_rule() -> None:
    findings: list[Finding] = []
    for f in project_modules():
        findings += scan_source(f.read_text(encoding="utf-8"), str(f.relative_to(REPO)))
    assert not findings, "security rules broken (see SECURITY.md):\n" + "\n".join(map(str, findings))


def test_registry_modules_verify_sha256_before_loading() -> None:
    """A module allowed to unpickle must compute a sha256 (the digest the announcement carries)."""
    for rel in REGISTRY_MODULES:
        path = REPO / rel
        if not path.exists():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        scanner = _Scanner(rel)
        scanner.visit(tree)
        loads = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and scanner.dotted(n.func) in UNPICKLERS]
        if loads:
            names = {scanner.dotted(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
            assert "hashlib.sha256" in names or "hashlib.file_digest" in names, (
                f"{rel} unpickles artifacts but never computes a sha256 to verify them")


BAD = {
    "eval": "eval(payload)",
    "exec alias": "import builtins as b\nb.exec(code)",
    "pickle": "import pickle\npickle.loads(raw)",
    "pickle from-import alias": "from pickle import loads as l\nl(raw)",
    "joblib": "import joblib\njoblib.load(path)",
    "read_pickle": "import pandas as pd\npd.read_pickle(p)",
    "numpy pickle": "import numpy as np\nnp.load(p, allow_pickle=True)",
    "shell=True": "import subprocess\nsubprocess.run(cmd, shell=True)",
    "shell variable": "from subprocess import Popen\nPopen(cmd, shell=use_shell)",
    "os.system": "import os\nos.system('ls ' + d)",
    "yaml.load bare": "import yaml\nyaml.load(text)",
    "yaml unsafe loader": "import yaml\nyaml.load(text, Loader=yaml.UnsafeLoader)",
    "yaml.full_load": "import yaml\nyaml.full_load(text)",
}
GOOD = {
    "literal_eval": "import ast\nast.literal_eval(s)",
    "method named eval": "model.eval()",
    "subprocess list": "import subprocess\nsubprocess.run(['stunnel4', conf], shell=False)",
    "safe yaml": "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)\nyaml.safe_load(text)",
    "numpy load": "import numpy as np\nnp.load(p)",
    "string mention": "doc = 'never call eval() or pickle.loads()'",
}


@pytest.mark.parametrize("case", BAD)
def test_guard_catches(case: str) -> None:
    assert scan_source(BAD[case]), f"guard missed: {BAD[case]!r}"


@pytest.mark.parametrize("case", GOOD)
def test_guard_allows(case: str) -> None:
    assert not scan_source(GOOD[case]), f"false positive: {GOOD[case]!r}"
