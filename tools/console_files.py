"""`make console-files`: the files a console user pastes, with the deployment's values filled in.

Every such file (infra/iam/, infra/alarms/, infra/dashboard.json, sql/ddl/, events/) names the values
that differ between deployments with one placeholder convention, {{NAME}}:

    {{BUCKET}}   the pipeline's bucket                  (required)
    {{REGION}}   the AWS region, e.g. eu-west-1         (default us-east-1)
    {{ACCOUNT}}  the 12-digit AWS account ID            (required when a file names it)

Double braces cannot be part of a real bucket name, region, ARN or SQL identifier, so a file pasted
unfilled fails loudly instead of working on the wrong resource, and they never clash with the Athena
projection template's ${year} or CloudFormation's ${AWS::Region}.

    make console-files BUCKET=my-pipeline-bucket REGION=eu-west-1 ACCOUNT=123456789012
    python3 -m tools.console_files --bucket my-pipeline-bucket --account 123456789012

writes each file, filled in, under build/console/ at its path in the repository (build/console/infra/
iam/generator-policy.json, ...). Standard library only, and Python 3.9 syntax (tests check it), so it
runs in AWS CloudShell without the project's venv.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

_logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "build" / "console"
DEFAULT_REGION = "us-east-1"
# The files a console user pastes that name deployment values (globs under the repository root).
SOURCES = (
    "infra/iam/*.json",
    "infra/alarms/*.json",
    "infra/dashboard.json",
    "sql/ddl/*.sql",
    "events/*.json",
)
NAMES = {
    "BUCKET": "the pipeline's bucket",
    "REGION": "the AWS region",
    "ACCOUNT": "the 12-digit AWS account ID",
}
PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# What a leftover or misspelt placeholder looks like: an opening double brace (JSON and SQL have none).
LEFTOVER = "{{"


class ConsoleFilesError(ValueError):
    """A value is missing or invalid, or a file names a placeholder this tool does not know."""


def placeholder(name: str) -> str:
    """The spelling of a placeholder in the files, e.g. placeholder("BUCKET") == "{{BUCKET}}"."""
    if name not in NAMES:
        raise KeyError(f"unknown placeholder {name!r}; known: {', '.join(NAMES)}")
    return "{{" + name + "}}"


def check_bucket(name: str) -> str:
    """An S3 general purpose bucket name, checked against S3's naming rules; the error says which rule."""
    problems = []
    if not 3 <= len(name) <= 63:
        problems.append(f"it must be 3 to 63 characters long (it is {len(name)})")
    if not re.fullmatch(r"[a-z0-9.-]*", name):
        problems.append("it may hold only lowercase letters, digits, dots and hyphens")
    if not re.fullmatch(r"[A-Za-z0-9](.*[A-Za-z0-9])?", name):
        problems.append("it must begin and end with a letter or a digit")
    if ".." in name:
        problems.append("it may not hold two dots in a row")
    try:
        ipaddress.IPv4Address(name)
        problems.append("it may not look like an IP address")
    except ValueError:
        pass
    for prefix in ("xn--", "sthree-", "amzn-s3-demo-"):
        if name.startswith(prefix):
            problems.append(f"it may not start with {prefix!r}")
    for suffix in ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"):
        if name.endswith(suffix):
            problems.append(f"it may not end with {suffix!r}")
    if problems:
        raise ConsoleFilesError(f"BUCKET {name!r} is not a valid S3 bucket name: {'; '.join(problems)}")
    return name


def check_region(name: str) -> str:
    """An AWS region of the standard partition (the files' ARNs say arn:aws:)."""
    if not re.fullmatch(r"[a-z]{2,4}(-[a-z]+)+-\d{1,2}", name):
        raise ConsoleFilesError(f"REGION {name!r} is not an AWS region name (e.g. us-east-1, eu-west-1)")
    for prefix, partition in (("cn-", "aws-cn"), ("us-gov-", "aws-us-gov"), ("us-iso", "an isolated")):
        if name.startswith(prefix):
            raise ConsoleFilesError(
                f"REGION {name} is in the {partition} partition, but the files' ARNs are for the standard "
                "one (arn:aws:...): fill them in for a standard region, then replace arn:aws: yourself"
            )
    return name


def check_account(account: str) -> str:
    if not re.fullmatch(r"\d{12}", account):
        raise ConsoleFilesError(
            f"ACCOUNT {account!r} is not a 12-digit AWS account ID (the console shows it top right; "
            "in CloudShell: aws sts get-caller-identity --query Account --output text)"
        )
    return account


def placeholders(text: str) -> set[str]:
    """The placeholder names a text uses."""
    return set(PLACEHOLDER_RE.findall(text))


def render(text: str, values: Mapping[str, str], where: str) -> str:
    """`text` with every {{NAME}} replaced by values[NAME]; an unknown or unfilled name is an error."""
    unknown = sorted(placeholders(text) - set(NAMES))
    if unknown:
        raise ConsoleFilesError(
            f"{where} names unknown placeholder(s) {', '.join(unknown)}; known: {', '.join(NAMES)}"
        )
    missing = sorted(n for n in placeholders(text) if not values.get(n))
    if missing:
        raise ConsoleFilesError(f"{where} needs {', '.join(missing)}, which was not given")
    rendered = PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], text)
    if LEFTOVER in rendered:
        line = rendered[: rendered.index(LEFTOVER)].count("\n") + 1
        raise ConsoleFilesError(
            f"{where}, line {line}: {LEFTOVER} is left after filling in: a misspelt placeholder?"
        )
    return rendered


def source_files(root: Path = ROOT) -> list[Path]:
    """Every file a console user pastes that may name a placeholder, in a stable order."""
    found: list[Path] = []
    for pattern in SOURCES:
        found.extend(sorted(root.glob(pattern)))
    return found


def render_all(values: Mapping[str, str], out: Path, root: Path = ROOT) -> list[Path]:
    """Check the values, then write every source file, filled in, to out/<its path under root>.

    Nothing is written unless every file can be filled in.
    """
    given = {name: value.strip() for name, value in values.items() if value and value.strip()}
    if "BUCKET" not in given:
        raise ConsoleFilesError(
            "BUCKET is required: make console-files BUCKET=<your bucket> [REGION=...] [ACCOUNT=...]"
        )
    check_bucket(given["BUCKET"])
    given["REGION"] = check_region(given.get("REGION", DEFAULT_REGION))
    if "ACCOUNT" in given:
        check_account(given["ACCOUNT"])
    sources = source_files(root)
    needs_account = [
        p.relative_to(root).as_posix()
        for p in sources
        if "ACCOUNT" in placeholders(p.read_text(encoding="utf-8"))
    ]
    if needs_account and "ACCOUNT" not in given:
        raise ConsoleFilesError(
            f"ACCOUNT is required: {len(needs_account)} files name the account "
            f"({', '.join(needs_account)}). Add ACCOUNT=<12 digits>; in CloudShell: "
            "ACCOUNT=$(aws sts get-caller-identity --query Account --output text)"
        )
    rendered: dict[Path, str] = {}
    for path in sources:
        relative = path.relative_to(root)
        text = render(path.read_text(encoding="utf-8"), given, relative.as_posix())
        if path.suffix == ".json":
            try:
                json.loads(text)
            except ValueError as e:
                raise ConsoleFilesError(f"{relative.as_posix()} is not valid JSON once filled in: {e}") from e
        rendered[relative] = text
    written = []
    for relative, text in rendered.items():
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m tools.console_files",
        description="Write the console files with {{BUCKET}}, {{REGION}} and {{ACCOUNT}} filled in.",
    )
    parser.add_argument("--bucket", default="", help="the pipeline's bucket (required)")
    parser.add_argument("--region", default="", help=f"the AWS region (default {DEFAULT_REGION})")
    parser.add_argument(
        "--account", default="", help="the 12-digit account ID (required: the IAM and alarm files name it)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default build/console)")
    args = parser.parse_args(argv)
    try:
        written = render_all(
            {"BUCKET": args.bucket, "REGION": args.region, "ACCOUNT": args.account}, args.out
        )
    except ConsoleFilesError as e:
        print(f"console-files: {e}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    print(f"{len(written)} files written under {shown}/ with the values filled in:")
    for path in written:
        print(f"  {path.resolve().relative_to(out).as_posix()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
