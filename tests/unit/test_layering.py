"""Imports point one way (web → common ← workers): the web never pulls in torch, the workers never pull in
Flask, and the import-linter contracts in pyproject.toml hold and really check external packages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def modules_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    """The top-level packages in sys.modules after running ``code`` in a fresh interpreter."""
    code += "\nimport json, sys\nprint(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def modules_after_import(*modules: str) -> set[str]:
    return modules_after("".join(f"import {m}\n" for m in modules))


def test_importing_the_web_app_does_not_import_torch():
    loaded = modules_after_import("web", "web.app")
    assert "flask" in loaded, "sanity: the web app was imported"
    assert "torch" not in loaded


def test_every_web_module_and_the_built_app_leave_torch_unloaded(tmp_path):
    # blueprints are imported inside create_app, and lazily imported code is the one that matters here
    code = textwrap.dedent(
        """
        import importlib, pkgutil
        import web
        for info in pkgutil.walk_packages(web.__path__, "web."):
            importlib.import_module(info.name)
        from web.app import create_app
        app = create_app()
        client = app.test_client()
        client.get("/healthz")
        client.get("/")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTLAB_")} | {
        "LATENTLAB_DATA": str(tmp_path / "data"),
        "LATENTLAB_SIGNING_KEY_FILE": str(tmp_path / "keys" / "signing.key"),
    }
    loaded = modules_after(code, env)
    assert "flask" in loaded
    assert "torch" not in loaded


def test_importing_the_worker_app_imports_neither_torch_nor_flask():
    loaded = modules_after_import("workers.app")
    assert "celery" in loaded, "sanity: the Celery app was imported"
    assert "torch" not in loaded, "models load lazily in the worker child, never at import"
    assert "flask" not in loaded


def test_import_contracts_hold():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports, "import-linter is a dev dependency: pip install -e '.[dev]'"
    result = subprocess.run([lint_imports], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_import_contracts_catch_external_packages_and_the_model_code(tmp_path):
    """The contracts are not vacuous: the same configuration, run on a small tree that breaks each rule,
    reports every break (and accepts the lazy import of the model code from common)."""
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    if "torch" not in json.dumps(config):
        pytest.fail("pyproject.toml has no import contract that forbids torch")
    for package in config["root_packages"]:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "common" / "ml").mkdir()
    (tmp_path / "common" / "ml" / "__init__.py").write_text("")
    (tmp_path / "common" / "ml" / "networks.py").write_text("import torch\n")
    # the sanctioned shape: common code imports the model code lazily; the web may use that module
    (tmp_path / "common" / "service.py").write_text("def run():\n    import common.ml.networks\n")
    (tmp_path / "web" / "fine.py").write_text("import common.service\n")
    (tmp_path / "web" / "views.py").write_text("import torch\n")
    (tmp_path / "web" / "models.py").write_text("import common.ml.networks\n")
    (tmp_path / "workers" / "tasks.py").write_text("import flask\n")
    (tmp_path / "common" / "queue.py").write_text("import celery\n")
    (tmp_path / "setup.cfg").write_text(_as_ini(config))
    result = subprocess.run(
        [lint_imports, "--config", "setup.cfg"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode != 0, result.stdout + result.stderr
    report = result.stdout
    assert "web.views -> torch" in report, report
    assert "web.models -> common.ml.networks" in report, report
    assert "workers.tasks -> flask" in report, report
    assert "common.queue -> celery" in report, report
    assert "web.fine" not in report, report


def _as_ini(config: dict) -> str:
    """The [tool.importlinter] table of pyproject.toml as the equivalent setup.cfg sections."""

    def value(v) -> str:
        if isinstance(v, list):
            return "\n" + "\n".join(f"    {item}" for item in v)
        return str(v)

    top = {k: v for k, v in config.items() if k != "contracts"}
    text = "[importlinter]\n" + "".join(f"{k} = {value(v)}\n" for k, v in top.items())
    for i, contract in enumerate(config["contracts"]):
        text += f"\n[importlinter:contract:{i}]\n" + "".join(
            f"{k} = {value(v)}\n" for k, v in contract.items()
        )
    return textwrap.dedent(text)
