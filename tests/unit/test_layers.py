"""The project's layers point one way and each format has one owner, checked on the source itself:

* the library (everything under recserve/ but cli/ and bench/) never imports the entry points
  (deployments, actors, pipelines, scripts), at a module's top or inside a function;
* only recserve/redis_client.py makes Redis clients;
* only recserve/index/artifact.py spells the index artifact's and the live index's file names;
* serving loads no offline code (a fresh interpreter importing the serving path).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = ("deployments", "actors", "pipelines", "scripts")
SOURCE_DIRS = ("recserve", "deployments", "actors", "pipelines", "scripts")


def _modules(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def _library() -> list[Path]:
    return [p for p in _modules("recserve") if p.relative_to(ROOT).parts[1] not in ("cli", "bench")]


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def test_the_library_never_imports_an_entry_point():
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {name}"
        for p in _library()
        for line, name in _imports(p)
        if name.split(".")[0] in ENTRY_POINTS
    ]
    assert not bad, "the library must not import its entry points (hand the class in instead):\n" + "\n".join(bad)


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from actors.vector_shard import VectorShard\n    return VectorShard\n")
    assert _imports(f) == [(2, "actors.vector_shard")]


def _calls(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            f = node.func
            name = ast.unparse(f)
            if re.search(r"(^|\.)Redis(Cluster)?(\.from_url)?$", name) or name.endswith("Redis.from_pool"):
                out.append((node.lineno, name))
    return out


def test_only_the_client_factory_makes_redis_clients():
    factory = ROOT / "recserve" / "redis_client.py"
    bad = [
        f"{p.relative_to(ROOT)}:{line} calls {name}"
        for p in _modules(*SOURCE_DIRS)
        if p != factory
        for line, name in _calls(p)
    ]
    assert not bad, "make Redis clients with recserve.redis_client.connect / connect_async:\n" + "\n".join(bad)
    assert _calls(factory), "the factory itself makes them"


INDEX_NAMES = re.compile(r"routing\.json|items_meta\.json|wal\.log|shard_\{|shard_\d{4}|shard_\*|\.faiss[\"']")


def test_only_the_artifact_module_spells_the_index_file_names():
    owner = ROOT / "recserve" / "index" / "artifact.py"
    assert INDEX_NAMES.search(owner.read_text())
    bad = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in _modules(*SOURCE_DIRS)
        if p != owner
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if INDEX_NAMES.search(line)
    ]
    assert not bad, "the index's file names belong to recserve.index.artifact:\n" + "\n".join(bad)


def test_packages_installed_are_the_ones_imported_as_packages():
    import tomllib

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    installed = {i.rstrip("*") for i in conf["tool"]["setuptools"]["packages"]["find"]["include"]}
    imported = {name.split(".")[0] for p in _modules(*SOURCE_DIRS) for _, name in _imports(p)}
    for conf_file in ROOT.glob("serve_config*.yaml"):
        imported |= set(re.findall(r"import_path: (\w+)\.", conf_file.read_text()))
    local = {d for d in SOURCE_DIRS if (ROOT / d / "__init__.py").exists()}
    assert installed == imported & local, (installed, imported & local)
    assert "scripts" not in installed  # a generic name that would collide in site-packages


def test_serving_imports_no_offline_code():
    code = (
        "import sys; import deployments.app, deployments.ingress, recserve.serving.wiring, "
        "recserve.serving.service, recserve.serving.recommender, recserve.explain.core; "
        "bad = sorted(m for m in sys.modules if m.startswith('recserve.offline')); print(bad); "
        "sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
