"""The runtime never imports torch, not even transitively: proven in processes where torch cannot load."""

import subprocess
import sys
import textwrap

import pytest

BLOCK_TORCH = "import sys; sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


def test_torch_is_really_blocked():
    result = _python("import torch")
    assert result.returncode != 0 and "ModuleNotFoundError: import of torch halted" in result.stderr


def test_every_runtime_module_imports_without_torch():
    result = _python("""
        import importlib, pkgutil, sys
        from gap_deploy import runtime
        names = [m.name for m in pkgutil.walk_packages(runtime.__path__, 'gap_deploy.runtime.')]
        for name in names:
            importlib.import_module(name)
        heavy = sorted(n for n in ('torch', 'onnxscript', 'torchinfo', 'gap_deploy.exporter') if sys.modules.get(n))
        print(len(names), heavy)
    """)
    assert result.returncode == 0, result.stderr
    count, heavy = result.stdout.split(" ", 1)
    assert int(count) >= 15 and heavy.strip() == "[]"


def test_load_and_run_an_exported_model_without_torch(reference_onnx):
    result = _python(f"""
        import numpy as np, onnxruntime as ort
        from gap_deploy import runtime
        session = runtime.load({str(reference_onnx)!r})
        bare = ort.InferenceSession({str(reference_onnx)!r}, providers=['CPUExecutionProvider'])
        for shape in [(1, 3, 4, 4), (1, 3, 37, 53), (2, 3, 64, 64), (3, 3, 120, 17)]:
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            got, want = session.run(x), bare.run(None, {{'images': x}})[0]
            assert got.shape == (shape[0], 10), got.shape
            np.testing.assert_array_equal(got, want)
        print(session.backend, session.metadata.min_height, session.metadata.class_name(3))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ort-cpu", "4", "class3"]


@pytest.mark.parametrize("module", ["gap_deploy.runtime.cli.run", "gap_deploy.exporter.cli.build",
                                    "gap_deploy.runtime.cli.bench"])
def test_cli_help_works_without_torch(module):
    result = _python(f"""
        import importlib, sys
        sys.argv = ['x', '--help']
        importlib.import_module({module!r}).main()
    """)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def test_building_and_precision_variants_need_no_torch(reference_onnx):
    result = _python(f"""
        import sys, onnx
        import gap_deploy.exporter.builder, gap_deploy.exporter.cli.build
        from gap_deploy.exporter.precision import make_variant
        from gap_deploy.runtime.parity import default_verify_shapes
        fp32 = onnx.load({str(reference_onnx)!r})
        result = make_variant(fp32, "fp16", default_verify_shapes(3, (32, 32), 4, dynamic=True))
        print(result.passed, sorted(n for n in ('torch', 'onnxscript') if sys.modules.get(n)))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True []"


def test_gap_bench_on_onnx_runs_without_torch(reference_onnx):
    result = _python(f"""
        import sys
        from gap_deploy.runtime.cli.bench import main
        sys.argv = ['gap-bench', {str(reference_onnx)!r}, '--shape', '1x3x16x16', '--warmup', '0',
                    '--iterations', '3']
        try:
            main()
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        assert 'torch' not in sys.modules or sys.modules['torch'] is None
    """)
    assert result.returncode == 0, result.stderr
    assert "ort-cpu" in result.stdout and "1x3x16x16" in result.stdout


def test_gap_tune_runs_without_torch(reference_onnx, tmp_path):
    from PIL import Image

    folder = tmp_path / "class3"
    folder.mkdir()
    Image.new("RGB", (20, 30), (200, 10, 10)).save(folder / "red.png")
    result = _python(f"""
        import sys
        from gap_deploy.exporter.cli.tune import main
        sys.argv = ['gap-tune', {str(reference_onnx)!r}, '--data', {str(tmp_path)!r}, '--sizes', '8',
                    '--duration', '0.05', '--min-top1', '0']
        try:
            main()
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        assert sorted(n for n in ('torch', 'onnxscript', 'torchinfo') if sys.modules.get(n)) == []
    """)
    assert result.returncode == 0, result.stderr
    assert "Chosen for top-1 >= 0.0%" in result.stdout


def _sources(package: str):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "gap_deploy"
    return sorted((root / package).rglob("*.py"))


def _imported(tree) -> list[tuple[int, str]]:
    """(line, full module name) of every import in ``tree``: ``from gap_deploy import exporter`` is
    gap_deploy.exporter, ``from gap_deploy.runtime.files import x`` is gap_deploy.runtime.files."""
    import ast

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
            if node.module == "gap_deploy":
                found += [(node.lineno, f"gap_deploy.{a.name}") for a in node.names]
    return found


def test_no_runtime_module_imports_the_exporter():
    """The arrow runs one way: exporter -> runtime. Read from the source, so a lazy import counts too."""
    import ast

    offenders = []
    for path in _sources("runtime"):
        offenders += [f"{path.name}:{line} {name}" for line, name in _imported(ast.parse(path.read_text()))
                      if name.startswith("gap_deploy.exporter") or name.split(".")[0] == "exporter"]
    assert offenders == []


def test_no_private_attribute_of_another_object_is_used():
    """`x._name` only on self/cls: internals stay behind the public Runner/Session API."""
    import ast

    offenders = []
    for package in ("runtime", "exporter"):
        for path in _sources(package):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                    owner = node.value.id if isinstance(node.value, ast.Name) else None
                    if owner not in ("self", "cls"):
                        offenders.append(f"{path.relative_to(path.parents[1])}:{node.lineno} .{node.attr}")
    assert offenders == []


def test_a_missing_checkpoint_is_reported_before_torch_is_imported(tmp_path):
    """'checkpoint does not exist' must not wait for torch: here torch cannot even be imported."""
    result = _python(f"""
        import sys
        from gap_deploy.exporter.cli.export import main
        sys.argv = ['gap-export', {str(tmp_path / 'missing.pt')!r}, '--dynamic']
        main()
    """)
    assert result.returncode == 1, result.stderr
    assert "missing.pt does not exist" in result.stderr and "Traceback" not in result.stderr


# ---- the structure's rules (issue 19), read from the source --------------------------------------------------

def _module_files() -> dict:
    """gap_deploy.* module name -> its file (a Path): the import name is the path under the checkout."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    modules = {}
    for path in sorted((root / "gap_deploy").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        modules[".".join(parts)] = path
    return modules


def _all_imports(tree) -> set[str]:
    """Every module a file imports, at the top or inside a function (a lazy import is an arrow too)."""
    import ast

    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_no_import_cycles():
    """The imports form no cycle, lazy imports inside functions included."""
    import ast

    files = _module_files()
    graph = {name: {n for n in _all_imports(ast.parse(path.read_text())) if n in files and n != name}
             for name, path in files.items()}
    for name, targets in graph.items():  # a package's __init__ is imported with its modules: not an edge back
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_one_reader_of_an_onnx_models_input():
    """Only runtime/artifact.py reads graph.input / graph.output; everyone else asks runtime.artifact.describe."""
    import re

    pattern = re.compile(r"graph\.(input|output)\s*\[|len\([^)]*graph\.(input|output)\)")
    offenders = [f"{path.name}:{n}" for name, path in _module_files().items() if name != "gap_deploy.runtime.artifact"
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_no_backend_name_is_tested_outside_the_table():
    """`backend == "ort-trt"`, `startswith("ort")`, `in ("trt", ...)`: facts come from runtime/backends/table.py."""
    import ast

    from gap_deploy.runtime.backends.table import BACKENDS

    names = set(BACKENDS)
    offenders = []
    for name, path in _module_files().items():
        if name == "gap_deploy.runtime.backends.table":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                consts = [o for o in operands if isinstance(o, ast.Constant)]
                consts += [e for o in operands if isinstance(o, (ast.Tuple, ast.List, ast.Set)) for e in o.elts
                           if isinstance(e, ast.Constant)]
                if any(c.value in names for c in consts):
                    offenders.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr == "startswith" and node.args and isinstance(node.args[0], ast.Constant) and \
                    str(node.args[0].value) in ("ort", "ort-", "trt"):
                offenders.append(f"{path.name}:{node.lineno} startswith")
    assert offenders == []


def test_one_way_to_publish_and_one_onnx_writer():
    """Files appear only through runtime/publish.py (no os.replace or staging folders elsewhere), and ONNX files
    are written only by runtime/onnx_file.save_onnx (onnx.save / save_model nowhere else)."""
    import re

    rules = {"gap_deploy.runtime.publish": re.compile(r"os\.replace\(|tempfile\.mkdtemp\("),
             "gap_deploy.runtime.onnx_file": re.compile(r"onnx\.save\(|onnx\.save_model\(")}
    offenders = []
    for name, path in _module_files().items():
        for owner, pattern in rules.items():
            if name != owner:
                offenders += [f"{path.name}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1)
                              if pattern.search(line)]
    assert offenders == []


def test_nothing_imports_upward_or_by_the_bare_folder_names():
    """Libraries never import a CLI module; no code imports `runtime` or `exporter` by the folder name (installed,
    they are gap_deploy.runtime and gap_deploy.exporter: a bare name would find an application's own package)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for name, path in _module_files().items():
        is_cli = ".cli." in name or name.endswith(".cli")
        for line, imported in _imported(ast.parse(path.read_text())):
            if not is_cli and ".cli" in imported and imported.startswith("gap_deploy."):
                offenders.append(f"{path.name}:{line} imports {imported}")
    for path in [*root.glob("tests/**/*.py"), *root.glob("scripts/*.py"), *_module_files().values()]:
        for line, imported in _imported(ast.parse(path.read_text())):
            if imported.split(".")[0] in ("runtime", "exporter"):
                offenders.append(f"{path.relative_to(root)}:{line} imports {imported}")
    assert offenders == []


def test_the_import_path_is_the_folder_path_and_the_install_adds_no_other_name(tmp_path):
    """Static tools resolve an import by its path: gap_deploy.runtime.session must be gap_deploy/runtime/session.py
    of this checkout, and the install (editable here) must not put the checkout itself on sys.path, which would
    make its runtime/, exporter/, tests/ and scripts/ importable under those bare names."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import importlib.util, gap_deploy.runtime.session as s, gap_deploy.exporter.pipeline as p\n"
            "print(s.__file__); print(p.__file__)\n"
            "specs = [importlib.util.find_spec(n) for n in ('runtime', 'exporter', 'tests', 'scripts')]\n"
            "print([str(p) for s in specs if s for p in (s.submodule_search_locations or [s.origin])])")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    session_file, pipeline_file, bare = done.stdout.splitlines()
    assert Path(session_file) == root / "gap_deploy" / "runtime" / "session.py"
    assert Path(pipeline_file) == root / "gap_deploy" / "exporter" / "pipeline.py"
    ours = {str(root / n) for n in ("runtime", "exporter", "tests", "scripts")}
    assert not ours & set(ast.literal_eval(bare))  # other distributions may own a top-level `tests`


def test_the_exporters_lazy_names_are_the_names_type_checkers_see():
    """gap_deploy.exporter loads its public names lazily (__getattr__) and names them again under TYPE_CHECKING
    for static tools; __all__, the lazy table and the TYPE_CHECKING imports must be the same set."""
    import ast
    from pathlib import Path

    import gap_deploy.exporter as exporter

    source = Path(exporter.__file__).read_text()
    checked = {alias.asname or alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.If)
               and ast.unparse(node.test) == "TYPE_CHECKING" for stmt in node.body
               if isinstance(stmt, ast.ImportFrom) for alias in stmt.names}
    assert set(exporter.__all__) == set(exporter._EXPORTS) == checked


def test_a_command_never_imports_another_commands_module():
    """What commands share lives in runtime/cli/common.py and exporter/cli/options.py; a command's own module
    (gap-eval's, gap-build's) is imported by nobody but its console script."""
    import ast

    shared = {"gap_deploy.runtime.cli.common", "gap_deploy.exporter.cli.options", "gap_deploy.runtime.cli",
              "gap_deploy.exporter.cli"}
    offenders = []
    for name, path in _module_files().items():
        for line, imported in _imported(ast.parse(path.read_text())):
            if ".cli." in imported and imported not in shared and imported != name:
                offenders.append(f"{name}:{line} imports {imported}")
    assert offenders == []
