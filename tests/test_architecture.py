"""The seams of the code base, checked: one definition per public name, fusion depends one way,
the library reads no files from the source tree, and the command line's parser stays cheap."""
import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hybrid_retrieval", "fusion")
MODULE_LOGGER = "log"  # each module's logging.getLogger("hybrid_retrieval"), by convention


def _modules() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]


def _top_level_names(tree: ast.Module) -> list[str]:
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return names


def test_one_definition_per_public_name() -> None:
    where = defaultdict(list)
    for path in _modules():
        for name in _top_level_names(ast.parse(path.read_text())):
            if not name.startswith("_") and name != MODULE_LOGGER:
                where[name].append(str(path.relative_to(ROOT)))
    twice = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert not twice, f"public names defined more than once: {twice}"


def test_only_the_model_factory_imports_fusion_at_import_time() -> None:
    importers = []
    for path in (ROOT / "hybrid_retrieval").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only: imports inside functions are lazy
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "fusion" for a in node.names):
                importers.append(path.name)
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "fusion":
                importers.append(path.name)
    assert importers == ["model.py"]


def test_library_never_reads_the_source_tree() -> None:
    """Package data is read through importlib.resources, never relative to a source file."""
    for path in _modules():
        text = path.read_text()
        assert "Path(__file__)" not in text and "parents[" not in text, path


def test_cli_parser_imports_no_model_code() -> None:
    code = ("import sys, hybrid_retrieval.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('faiss', 'transformers', 'timm', 'fusion', 'sacred', 'librosa', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
