"""The publishing workflow: valid for GitHub Actions (checked offline against the schema that
check-jsonschema vendors), building the book with `make book` and deploying what it builds."""

import subprocess
import sys

import yaml
from conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def test_workflows_are_valid_for_github_actions():
    assert WORKFLOWS
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                             *map(str, WORKFLOWS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_book_workflow_builds_caches_and_deploys_the_book():
    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    steps = flow["jobs"]["build"]["steps"]
    runs_ = [s.get("run", "") for s in steps]
    assert any(r.startswith("make book") and "TORCH_INDEX=https://download.pytorch.org/whl/cpu" in r for r in runs_)
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache"))
    assert cache["with"]["path"] == "runs/" and "lib/gendiv/**" in cache["with"]["key"]
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "book/_build/html"  # where `gendiv book` writes (cli.build_book)
    assert flow["jobs"]["deploy"]["steps"][0]["uses"].startswith("actions/deploy-pages")
