"""The shape of the code: layers that import one way, no import cycles, short functions.

docs/design.md draws the layers; LAYERS below is the same order. A module may import its own
layer and the layers before it, never one after it, not even inside a function.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gptjax"

# Lowest first. A module belongs to the longest prefix listed.
LAYERS = [
    ("gptjax.config", "gptjax.tokenizers"),
    ("gptjax.parallel",),
    ("gptjax.model",),
    ("gptjax.generation",),
    ("gptjax.interop",),
    ("gptjax.data",),
    ("gptjax.training", "gptjax.multiple_choice"),  # the loop scores multiple choice
    ("gptjax.bench", "gptjax.ablate", "gptjax.evaluate", "gptjax.perplexity", "gptjax.plots"),
    ("gptjax",),  # the package's facade: `from gptjax import GPT, Tokenizer`
]
MAX_FUNCTION_LINES = 80
# gptjax imports inside a function, each with the slow or optional dependency that justifies it.
# An import here still obeys the layers.
LATE_IMPORTS: dict[tuple[str, str], str] = {
    # `from gptjax import GPT` loads gptjax.training.checkpoint (run workdirs are model folders);
    # the loop would add TFDS and the data layer (~1 s) to every model load.
    ("gptjax.training", "gptjax.training.loop"): "TFDS, via the loop's data layer",
    # prepare_data starts its workers before anything else loads; TFDS and grain (~4 s) only
    # for a tfds: input.
    ("gptjax.data.prepare.settings", "gptjax.data.catalog_inputs"):
        "TFDS and grain, for tfds: inputs",
}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def layer(module: str) -> int:
    best, index = "", None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, index = prefix, i
    assert index is not None, f"{module} is in no layer; add it to LAYERS and docs/design.md"
    return index


def _package(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def imports(module: str):
    """(imported gptjax module, line, inside a function or class) for each import statement."""
    tree = ast.parse(MODULES[module].read_text())
    late = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package(module).split(".")
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            # `from pkg import sub` imports the submodule; `from mod import name`, the module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target == "gptjax" or target.startswith("gptjax."):
                yield target, node.lineno, id(node) in late


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)


def test_lower_layers_never_import_higher_ones():
    wrong = [f"{m}:{line} imports {t} (layer {layer(m)} -> {layer(t)})"
             for m in MODULES for t, line, _ in imports(m) if layer(t) > layer(m)]
    assert not wrong, "a lower layer imports a higher one:\n" + "\n".join(wrong)


def test_no_gptjax_import_inside_a_function_without_a_reason():
    late = [f"{m}:{line} imports {t}" for m in MODULES for t, line, inner in imports(m)
            if inner and (m, t) not in LATE_IMPORTS]
    assert not late, ("gptjax imports inside functions (move them to the module's top, or "
                      "list them in LATE_IMPORTS with the slow dependency that justifies "
                      "them):\n" + "\n".join(late))


def test_no_module_level_import_cycle():
    graph = {m: sorted({t for t, _, inner in imports(m) if not inner and t != m})
             for m in MODULES}
    cycles, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    assert not cycles, f"module-level import cycles: {cycles}"


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The checks above can fail: two modules importing each other are found."""
    (tmp_path / "gptjax").mkdir()
    (tmp_path / "gptjax" / "__init__.py").write_text("")
    (tmp_path / "gptjax" / "config.py").write_text("from gptjax import model\n")
    (tmp_path / "gptjax" / "model.py").write_text("import gptjax.config\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "gptjax")
    monkeypatch.setattr(sys.modules[__name__], "MODULES", _modules())
    with pytest.raises(AssertionError, match="cycles"):
        test_no_module_level_import_cycle()
    with pytest.raises(AssertionError, match="gptjax.config:1 imports gptjax.model"):
        test_lower_layers_never_import_higher_ones()


def test_config_loads_nothing_else():
    """`import gptjax.config` loads no model, training or data code (nor JAX)."""
    code = ("import sys, gptjax.config; print(sorted(m for m in sys.modules "
            "if m.startswith(('gptjax', 'jax', 'flax'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['gptjax', 'gptjax.config']"


def test_no_function_is_longer_than_80_lines():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, "functions longer than 80 lines (give their phases names):\n" + \
        "\n".join(long)
