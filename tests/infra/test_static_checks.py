"""cfn-lint and checkov on infra/template.yaml: no errors, no failed checks, every skip with a reason.

cfn-lint runs from the project venv. checkov pins an older boto3 than the pipeline's, so it lives in
its own venv (.venv-tools, built by `make test` from infra/requirements-checkov.txt); CHECKOV may
name another checkov executable. Both run as subprocesses with no network (checkov --skip-download).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.infra.cfn import TEMPLATE, load_template

TOOLS_CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"
# cfn-lint is installed with moto[server] in the project venv, next to this interpreter.
CFN_LINT = str(Path(sys.executable).parent / "cfn-lint")


def _checkov_executable() -> str:
    configured = os.environ.get("CHECKOV")
    if configured:
        return configured
    if TOOLS_CHECKOV.exists():
        return str(TOOLS_CHECKOV)
    found = shutil.which("checkov")
    if found:
        return found
    pytest.fail(
        f"checkov is not installed: run `make test` (it builds {TOOLS_CHECKOV.parent.parent.name}) "
        "or set CHECKOV to a checkov executable"
    )


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    # Only the tools' own arguments, no shell; the template path is the repository's.
    return subprocess.run(args, capture_output=True, text=True, check=False, cwd=ROOT, timeout=300)  # noqa: S603


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The template, a copy broken on purpose and a copy without its checkov skips, side by side.

    Each tool runs once over all three (they take several files), which keeps the suite fast; the
    copies prove the tools would report a problem, so that their silence on the template means clean.
    """
    folder = tmp_path_factory.mktemp("scanned")
    text = TEMPLATE.read_text(encoding="utf-8")
    files = {
        "template": folder / "template.yaml",
        # A runtime Lambda no longer accepts must be a cfn-lint error.
        "broken": folder / "broken.yaml",
        # Without its skips the template fails checkov: the skips, not a blind spot, keep it quiet.
        "unskipped": folder / "unskipped.yaml",
    }
    files["template"].write_text(text, encoding="utf-8")
    files["broken"].write_text(text.replace("python3.12", "python2.7"), encoding="utf-8")
    files["unskipped"].write_text(text.replace("checkov:\n", "checkov-skips-removed:\n"), encoding="utf-8")
    return files


@pytest.fixture(scope="module")
def cfn_lint_findings(scanned: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    result = _run([CFN_LINT, "--format", "json", str(scanned["template"]), str(scanned["broken"])])
    assert result.stdout.strip(), f"cfn-lint printed nothing (exit {result.returncode}): {result.stderr}"
    findings: dict[str, list[dict[str, Any]]] = {name: [] for name in scanned}
    for finding in json.loads(result.stdout):
        findings[Path(finding["Filename"]).stem].append(finding)
    return findings


@pytest.fixture(scope="module")
def checkov_results(scanned: dict[str, Path]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """checkov's passed, failed and skipped checks, per scanned file."""
    result = _run(
        [
            _checkov_executable(),
            "--file",
            str(scanned["template"]),
            "--file",
            str(scanned["unskipped"]),
            "--framework",
            "cloudformation",
            "--output",
            "json",
            "--skip-download",
        ]
    )
    assert result.stdout.strip(), (
        f"checkov printed nothing (exit {result.returncode}): {result.stderr[-2000:]}"
    )
    report = json.loads(result.stdout)
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {"passed": [], "failed": [], "skipped": []} for name in scanned
    }
    for outcome in ("passed", "failed", "skipped"):
        for check in report["results"][f"{outcome}_checks"]:
            results[Path(check["file_path"]).stem][outcome].append(check)
    return results


def test_cfn_lint_reports_nothing_on_the_template(cfn_lint_findings: dict[str, list[dict[str, Any]]]) -> None:
    findings = cfn_lint_findings["template"]

    assert findings == [], "cfn-lint findings:\n" + "\n".join(
        f"{f['Rule']['Id']} {f['Location']['Path']}: {f['Message']}" for f in findings
    )


def test_cfn_lint_reports_an_error_in_the_broken_copy(
    cfn_lint_findings: dict[str, list[dict[str, Any]]],
) -> None:
    assert "Error" in {f["Level"] for f in cfn_lint_findings["broken"]}


def test_checkov_reports_no_failed_check_on_the_template(
    checkov_results: dict[str, dict[str, list[dict[str, Any]]]],
) -> None:
    results = checkov_results["template"]

    assert results["failed"] == [], "checkov failed checks:\n" + "\n".join(
        f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results["failed"]
    )
    assert len(results["passed"]) >= 30


def test_checkov_fails_the_copy_without_the_skips_on_exactly_the_skipped_checks(
    checkov_results: dict[str, dict[str, list[dict[str, Any]]]],
) -> None:
    skipped = {(c["check_id"], c["resource"]) for c in checkov_results["template"]["skipped"]}
    failed_without_skips = {(c["check_id"], c["resource"]) for c in checkov_results["unskipped"]["failed"]}

    assert skipped
    assert failed_without_skips == skipped


def test_every_checkov_skip_in_the_template_gives_its_reason(
    checkov_results: dict[str, dict[str, list[dict[str, Any]]]],
) -> None:
    template = load_template()
    skips = [
        (name, skip)
        for name, resource in template["Resources"].items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]

    assert len(skips) == len(checkov_results["template"]["skipped"]), "a skip that checkov does not use"
    for name, skip in skips:
        assert skip["id"].startswith("CKV_"), (name, skip)
        assert len(skip.get("comment", "").split()) >= 8, f"{name} skips {skip['id']} without a real reason"
