"""The Makefile's own logic, without AWS: make destroy's confirmation, make console-files, make images.

`aws` is replaced by a fake (AWS=<script>) that records its arguments, so what make would ask AWS to
do is read back from a file.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

STACK_ID = "arn:aws:cloudformation:eu-west-1:123456789012:stack/shop-test/0a1b2c3d"


def _make(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (fixed arguments)
        ["make", "--no-print-directory", "-s", "-C", str(ROOT), *args],  # noqa: S607 (make from PATH, as a user runs it)
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )


@pytest.fixture
def fake_aws(tmp_path: Path) -> tuple[Path, Path]:
    """An `aws` that logs each call; describe-stacks prints STACK_ID, or fails if no-stack exists."""
    log = tmp_path / "calls.log"
    script = tmp_path / "aws"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {shlex.quote(str(log))}\n'
        f'if [ "$2" = describe-stacks ]; then [ -e {shlex.quote(str(tmp_path / "no-stack"))} ] && exit 254; '
        f"echo {STACK_ID}; fi\n",
        encoding="utf-8",
    )
    script.chmod(0o755)
    return script, log


def _calls(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def test_destroy_names_the_stack_and_deletes_nothing_without_confirmation(
    fake_aws: tuple[Path, Path],
) -> None:
    aws, log = fake_aws

    result = _make("destroy", f"AWS={aws}", "STACK=shop-test", stdin="")

    assert result.returncode != 0
    assert "deletes the CloudFormation stack shop-test" in result.stdout
    assert STACK_ID in result.stdout  # its account and region
    assert "Type the stack name (shop-test)" in result.stdout
    assert "Not deleted" in result.stdout
    assert not [c for c in _calls(log) if "delete-stack" in c]


@pytest.mark.parametrize(
    "answer", ["y\n", "yes\n", "ecommerce\n", "SHOP-TEST\n", "shop-tes\n", "shop-test-2\n"]
)
def test_destroy_deletes_nothing_unless_the_answer_is_the_stack_name(
    fake_aws: tuple[Path, Path], answer: str
) -> None:
    aws, log = fake_aws

    result = _make("destroy", f"AWS={aws}", "STACK=shop-test", stdin=answer)

    assert result.returncode != 0
    assert not [c for c in _calls(log) if "delete-stack" in c]


def test_destroy_deletes_the_named_stack_once_confirmed(fake_aws: tuple[Path, Path]) -> None:
    aws, log = fake_aws

    result = _make("destroy", f"AWS={aws}", "STACK=shop-test", stdin="shop-test\n")

    assert result.returncode == 0, result.stdout + result.stderr
    assert _calls(log)[1:] == [
        "cloudformation delete-stack --stack-name shop-test",
        "cloudformation wait stack-delete-complete --stack-name shop-test",
    ]


def test_destroy_with_yes_1_skips_the_question(fake_aws: tuple[Path, Path]) -> None:
    aws, log = fake_aws

    result = _make("destroy", f"AWS={aws}", "STACK=shop-test", "YES=1")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Type the stack name" not in result.stdout
    assert "cloudformation delete-stack --stack-name shop-test" in _calls(log)


def test_destroy_of_a_stack_that_does_not_exist_says_so_and_deletes_nothing(
    fake_aws: tuple[Path, Path],
) -> None:
    aws, log = fake_aws
    (log.parent / "no-stack").touch()

    result = _make("destroy", f"AWS={aws}", "STACK=shop-test", "YES=1")

    assert result.returncode != 0
    assert "no stack shop-test found" in result.stdout
    assert not [c for c in _calls(log) if "delete-stack" in c]


def test_make_console_files_writes_the_filled_in_files(tmp_path: Path) -> None:
    out = tmp_path / "console"

    result = _make(
        "console-files",
        f"PYTHON={sys.executable}",
        "BUCKET=acme-shop-pipeline",
        "ACCOUNT=123456789012",
        "REGION=eu-west-1",
        f"CONSOLE_OUT={out}",
    )

    assert result.returncode == 0, result.stderr
    policy = (out / "infra" / "iam" / "transformer-policy.json").read_text(encoding="utf-8")
    assert "arn:aws:s3:::acme-shop-pipeline/raw/*" in policy
    assert "arn:aws:sqs:eu-west-1:123456789012:" in policy


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "BUCKET is required"),
        (["BUCKET=acme-shop-pipeline"], "ACCOUNT is required"),
        (["BUCKET=acme shop", "ACCOUNT=123456789012"], "not a valid S3 bucket name"),
        (["BUCKET=acme-shop-pipeline", 'ACCOUNT=1234"; touch pwned; "'], "not a 12-digit AWS account ID"),
    ],
)
def test_make_console_files_refuses_missing_or_bad_values(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = _make("console-files", f"PYTHON={sys.executable}", f"CONSOLE_OUT={tmp_path / 'out'}", *args)

    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "out").exists()
    assert not (ROOT / "pwned").exists()


def test_make_images_draws_the_charts_from_a_fixed_window_into_images_and_demo_never_does() -> None:
    images = _make("-n", "charts").stdout
    demo = _make("-n", "demo").stdout

    (command,) = [line for line in images.splitlines() if "local.demo" in line]
    assert "--charts images" in command
    for fixed in ("--end 2026-11-25T00:00Z", "--days 7", "--seed 42"):
        assert fixed in command
    (command,) = [line for line in demo.splitlines() if "local.demo" in line]
    assert "images" not in command
