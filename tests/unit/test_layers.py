"""The frontend's layers: text/ (tokenizer, detokenizer, stop strings, parsers, chat template) sits
below the run (frontend/run/) and the protocols, and reaches none of them: not directly, and not
through another module of this repository."""
import ast
from pathlib import Path

from common.config import ROOT

PACKAGES = ("common", "engine_worker", "frontend")


def module_files(root: Path) -> dict[str, Path]:
    """Every module of this repository's packages, by dotted name."""
    modules = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The repository's modules that `name` imports, wherever in it the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = absolute(node, package)
            # `from package import module` imports the module; `from module import name`, the module.
            found.update(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                         for alias in node.names)
    return {module for module in found if module in modules}


def absolute(node: ast.ImportFrom, package: str) -> str:
    """The module a `from … import` reads, relative imports resolved against `package`."""
    parts = package.split(".")[:len(package.split(".")) + 1 - node.level] if node.level else []
    return ".".join(parts + ([node.module] if node.module else []))


def chains_out(start: str, forbidden: tuple[str, ...], modules: dict[str, Path]) -> list[list[str]]:
    """Each import chain from module `start` to a module under one of the `forbidden` prefixes."""
    chains, seen, paths = [], {start}, [[start]]
    while paths:
        path = paths.pop()
        for module in sorted(imports_of(path[-1], modules[path[-1]], modules) - seen):
            seen.add(module)
            if module.startswith(forbidden):
                chains.append(path + [module])
            else:
                paths.append(path + [module])
    return chains


def above_text(root: Path) -> tuple[str, ...]:
    """Every package of frontend/ but text/ itself: the run, each protocol, and whatever comes next."""
    return tuple(f"frontend.{path.parent.name}" for path in sorted((root / "frontend").glob("*/__init__.py"))
                 if path.parent.name != "text")


def text_chains_out(root: Path) -> list[list[str]]:
    modules = module_files(root)
    forbidden = above_text(root)
    return [chain for name in sorted(modules) if name.startswith("frontend.text.")
            for chain in chains_out(name, forbidden, modules)]


def test_text_reaches_neither_a_protocol_nor_the_run():
    assert {"frontend.openai", "frontend.anthropic", "frontend.grps", "frontend.run"} <= set(above_text(ROOT))
    assert text_chains_out(ROOT) == []


def test_an_import_through_another_module_is_seen(tmp_path):
    files = {
        "frontend/__init__.py": "",
        "frontend/http.py": "from frontend.run import choices\n",
        "frontend/run/__init__.py": "",
        "frontend/run/choices.py": "",
        "frontend/openai/__init__.py": "",
        "frontend/openai/protocol.py": "",
        "frontend/text/__init__.py": "",
        "frontend/text/parser.py": "def later():\n    from .. import http\n",
        "frontend/text/template.py": "import frontend.openai.protocol\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for package in ("common", "engine_worker"):
        (tmp_path / package).mkdir()
    assert text_chains_out(tmp_path) == [
        ["frontend.text.parser", "frontend.http", "frontend.run.choices"],
        ["frontend.text.template", "frontend.openai.protocol"],
    ]
