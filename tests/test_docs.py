"""The docs hold: README is a short front door that links every docs page, every relative link resolves,
and README's quick facts are the stack's and the handlers'."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.conftest import ROOT
from tests.infra.cfn import CONSOLE_STACK_NAME, load_template, parameter_defaults, resources_of_type

README = ROOT / "README.md"
DOCS_PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCS = [README, *DOCS_PAGES]
# README is the front door: what it is, the two commands, quick facts, deploy, cost, links.
README_MAX_LINES = 300
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    """Markdown without code blocks and inline code, where links are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)  # code keeps its text
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file, with GitHub's -1, -2 ... for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        found.add(anchor if count == 0 else f"{anchor}-{count}")
        seen[anchor] = count + 1
    return found


def relative_links(path: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(_prose(path.read_text(encoding="utf-8")))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)  # http:, https:, mailto:, ...
    ]


def test_the_anchor_rule_is_githubs() -> None:
    assert github_anchor("See it work locally: `make demo`") == "see-it-work-locally-make-demo"
    assert github_anchor("0. Create the roles (least privilege)") == "0-create-the-roles-least-privilege"
    assert (
        github_anchor("Run the SQL on Athena: `tools/run_athena.py`")
        == "run-the-sql-on-athena-toolsrun_athenapy"
    )
    assert github_anchor("Fill in the files: `make console-files`") == "fill-in-the-files-make-console-files"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves_to_a_file_and_its_anchor(doc: Path) -> None:
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        resolved = (doc.parent / unquote(file_part)).resolve() if file_part else doc
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif not resolved.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{doc.name}: {broken}"


def test_the_link_check_sees_links_and_ignores_code(tmp_path: Path) -> None:
    doc = tmp_path / "a.md"
    doc.write_text(
        "# Title\n[ok](#title) ![pic](img.png) [web](https://example.com) `[not](a-link.md)`\n"
        "```\n[not](either.md)\n```\n[gone](missing.md#x)\n",
        encoding="utf-8",
    )
    assert relative_links(doc) == ["#title", "img.png", "missing.md#x"]
    assert anchors(doc) == {"title"}


def test_readme_is_a_front_door_of_at_most_300_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_readme_links_every_docs_page() -> None:
    linked = {(ROOT / unquote(t.partition("#")[0])).resolve() for t in relative_links(README)}
    assert DOCS_PAGES, "no docs/*.md found"
    assert [p.name for p in DOCS_PAGES if p.resolve() not in linked] == []


# --- README.md's quick facts ----------------------------------------------------------------------

TEMPLATE = load_template()
FUNCTIONS = {
    "generator": "GeneratorFunction",
    "transformer": "TransformerFunction",
    "compactor": "CompactorFunction",
}
# env.get("NAME"), env.get("NAME", "default"), os.environ.get(...), _env_number(env, "NAME", "default", ...)
ENV_READ = [
    re.compile(r'(?:env|environ)\.get\(\s*"([A-Z][A-Z0-9_]*)"(?:,\s*"([^"]*)")?\s*\)'),
    re.compile(r'_env_number\(\s*env,\s*"([A-Z][A-Z0-9_]*)",\s*"([^"]*)"'),
]


def quick_facts() -> dict[str, dict[str, str]]:
    """The first table under README's "## Quick facts..." heading: fact -> function -> cell."""
    text = README.read_text(encoding="utf-8")
    section = re.split(r"^## Quick facts.*$", text, maxsplit=1, flags=re.MULTILINE)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    facts = {}
    for row in rows[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        facts[cells[0]] = dict(zip(header[1:], cells[1:], strict=True))
    return facts


FACTS = quick_facts()


def _properties(function: str) -> dict[str, Any]:
    properties: dict[str, Any] = TEMPLATE["Resources"][FUNCTIONS[function]]["Properties"]
    return properties


def _env_in_code(function: str) -> dict[str, str]:
    """The variables a handler reads, with the default its code gives ("" for none); not Lambda's AWS_*."""
    source = (ROOT / "lambda" / function / "lambda_function.py").read_text(encoding="utf-8")
    found: dict[str, str] = {}
    for pattern in ENV_READ:
        for name, default in pattern.findall(source):
            if not name.startswith("AWS_"):
                found[name] = found.get(name) or default
    return found


def _link(cell: str) -> str:
    (target,) = re.findall(r"\]\(([^)]+)\)", cell)
    return str((README.parent / target).resolve().relative_to(ROOT))


def test_the_quick_facts_table_covers_the_three_functions() -> None:
    assert set(FACTS["runtime"]) == set(FUNCTIONS)
    assert {"code", "handler", "layer", "memory", "timeout", "environment variables", "trigger"} <= set(FACTS)


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_quick_facts_runtime_handler_architecture_size_and_code_are_the_templates(function: str) -> None:
    props = _properties(function)
    facts = {fact: cells[function] for fact, cells in FACTS.items()}

    assert facts["runtime"].lower().replace(" ", "") == props["Runtime"]
    assert facts["handler"].strip("`") == props["Handler"]
    assert facts["architecture"].strip("`") == props["Architectures"][0]
    assert facts["memory"] == f"{props['MemorySize']} MB"
    assert facts["timeout"] == f"{props['Timeout']} s"
    assert facts["ephemeral storage"] == f"{props.get('EphemeralStorage', {}).get('Size', 512)} MB"
    assert _link(facts["code"]) == f"lambda/{function}/lambda_function.py"
    assert props["Code"] == f"../lambda/{function}/"
    if "Layers" in props:
        layer = parameter_defaults(TEMPLATE)["PandasLayerArn"]
        assert props["Layers"] == [{"Ref": "PandasLayerArn"}]
        assert facts["layer"].strip("`") == layer.split(":")[6]
    else:
        assert facts["layer"] == "none"


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_quick_facts_environment_variables_are_what_the_template_sets_and_the_handler_reads(
    function: str,
) -> None:
    cell = FACTS["environment variables"][function]
    listed = dict(re.findall(r"`([A-Z][A-Z0-9_]*)` \(([^)]*)\)", cell))
    in_code = _env_in_code(function)
    in_template = set(_properties(function)["Environment"]["Variables"])

    assert set(listed) == set(in_code) | in_template
    for name, default in in_code.items():
        if default:
            assert listed[name] == f"default {default}", name
        else:  # no literal default: required, or what happens without it
            assert listed[name] == "required" or listed[name].startswith("default"), name


def test_quick_facts_triggers_are_the_stacks() -> None:
    params = parameter_defaults(TEMPLATE)
    rules = resources_of_type(TEMPLATE, "AWS::Events::Rule")
    targets = {r["Properties"]["Targets"][0]["Arn"]["Fn::GetAtt"][0]: r for r in rules.values()}
    (bucket,) = resources_of_type(TEMPLATE, "AWS::S3::Bucket").values()
    (notification,) = bucket["Properties"]["NotificationConfiguration"]["LambdaConfigurations"]
    filters = {r["Name"]: r["Value"] for r in notification["Filter"]["S3Key"]["Rules"]}

    for function, parameter in (("generator", "ScheduleRate"), ("compactor", "CompactionSchedule")):
        assert targets[FUNCTIONS[function]]["Properties"]["ScheduleExpression"] == {"Ref": parameter}
        assert FACTS["trigger"][function] == f"EventBridge schedule `{params[parameter]}`"
    assert notification["Function"] == {"Fn::GetAtt": ["TransformerFunction", "Arn"]}
    assert FACTS["trigger"]["transformer"] == (
        f"S3 `{notification['Event']}`, prefix `{filters['prefix']}`, suffix `{filters['suffix']}`"
    )


def test_quick_facts_retries_queue_and_concurrency_are_the_stacks() -> None:
    params = parameter_defaults(TEMPLATE)
    (invoke,) = resources_of_type(TEMPLATE, "AWS::Lambda::EventInvokeConfig").values()
    config = invoke["Properties"]
    queue = f"{CONSOLE_STACK_NAME}-transformer-failures"

    assert config["FunctionName"] == {"Ref": "TransformerFunction"}
    assert config["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["TransformerFailureQueue", "Arn"]
    }
    retries, hours = config["MaximumRetryAttempts"], config["MaximumEventAgeInSeconds"] // 3600
    assert FACTS["asynchronous invocation"]["transformer"] == (
        f"{retries} retries, maximum event age {hours} h, on failure to SQS `{queue}`"
    )
    for function in FUNCTIONS:
        parameter = f"{function.capitalize()}ReservedConcurrency"
        assert FACTS["reserved concurrency"][function] == str(params[parameter])


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_quick_facts_name_each_functions_policy_and_errors_alarm_file(function: str) -> None:
    name = function.capitalize()
    alarm = TEMPLATE["Resources"][f"{name}ErrorsAlarm"]["Properties"]
    role = _properties(function)["Role"]

    assert _link(FACTS["IAM policy"][function]) == f"infra/iam/{function}-policy.json"
    assert role == {"Fn::GetAtt": [f"{name}Role", "Arn"]}
    assert _link(FACTS["alarm"][function]) == f"infra/alarms/{function}-errors.json"
    assert {"Name": "FunctionName", "Value": {"Ref": FUNCTIONS[function]}} in alarm["Dimensions"]
    for fact in ("IAM policy", "alarm"):
        assert (ROOT / _link(FACTS[fact][function])).is_file()
