"""Reading infra/template.yaml in tests: load it as plain data and resolve its intrinsic functions.

The console path's files (IAM policies, alarms, dashboard) are the template's resources with the
stack's names filled in; `console_values()` gives the names the console path uses, so a test can
resolve the template and compare it with those files as data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cfnlint.decode import decode

from tests.conftest import ROOT
from tools.console_files import placeholder

INFRA = ROOT / "infra"
TEMPLATE = INFRA / "template.yaml"

# The console path's names: what the stack creates when it is called CONSOLE_STACK_NAME.
CONSOLE_STACK_NAME = "ecommerce"
CONSOLE_REGION_PLACEHOLDER = placeholder("REGION")
CONSOLE_ACCOUNT_PLACEHOLDER = placeholder("ACCOUNT")
CONSOLE_BUCKET_PLACEHOLDER = placeholder("BUCKET")

_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


class UnresolvedError(KeyError):
    """The template refers to a name that the test gave no value for."""


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as plain dicts, lists and strings, short-form tags (!Sub) in their long form."""
    template, problems = decode(str(path))
    assert not problems, f"{path} does not parse: {problems}"
    assert template is not None
    # cfn-lint's nodes subclass dict and str; a JSON round trip gives plain values.
    plain: dict[str, Any] = json.loads(json.dumps(template))
    return plain


def resources_of_type(template: Mapping[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == resource_type}


def parameter_defaults(template: Mapping[str, Any]) -> dict[str, Any]:
    return {name: p["Default"] for name, p in template["Parameters"].items() if "Default" in p}


def console_values(template: Mapping[str, Any]) -> dict[str, Any]:
    """Values for Ref/GetAtt/Sub that turn the template's resources into the console path's files."""
    stack = CONSOLE_STACK_NAME
    region, account = CONSOLE_REGION_PLACEHOLDER, CONSOLE_ACCOUNT_PLACEHOLDER
    values: dict[str, Any] = dict(parameter_defaults(template))
    values.update(
        {
            "AWS::StackName": stack,
            "AWS::Region": region,
            "AWS::AccountId": account,
            "AWS::Partition": "aws",
            "AWS::NoValue": None,
            "BucketName": CONSOLE_BUCKET_PLACEHOLDER,
            "DataBucket": CONSOLE_BUCKET_PLACEHOLDER,
            "GeneratorFunction": f"{stack}-generator",
            "TransformerFunction": f"{stack}-transformer",
            "CompactorFunction": f"{stack}-compactor",
            "GeneratorFunction.Arn": f"arn:aws:lambda:{region}:{account}:function:{stack}-generator",
            "TransformerFunction.Arn": f"arn:aws:lambda:{region}:{account}:function:{stack}-transformer",
            "CompactorFunction.Arn": f"arn:aws:lambda:{region}:{account}:function:{stack}-compactor",
            "TransformerFailureQueue.Arn": f"arn:aws:sqs:{region}:{account}:{stack}-transformer-failures",
            "TransformerFailureQueue.QueueName": f"{stack}-transformer-failures",
            "AlertTopic": f"arn:aws:sns:{region}:{account}:{stack}-alerts",
            "GlueDatabase": "ecommerce_db",
        }
    )
    return values


def _sub(text: str, values: Mapping[str, Any]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("!"):  # ${!literal} is Fn::Sub's escape for a literal ${literal}
            return "${" + name[1:] + "}"
        if name not in values:
            raise UnresolvedError(f"Fn::Sub refers to ${{{name}}}, which the test gave no value for")
        return str(values[name])

    return _SUB_VARIABLE.sub(replace, text)


def resolve(node: Any, values: Mapping[str, Any], conditions: Mapping[str, bool] | None = None) -> Any:
    """Resolve Ref, Fn::GetAtt, Fn::Sub and Fn::If in `node` with `values` (names -> values)."""
    if isinstance(node, list):
        resolved = [resolve(item, values, conditions) for item in node]
        return [item for item in resolved if item is not None]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        ((key, arg),) = node.items()
        if key == "Ref":
            if arg not in values:
                raise UnresolvedError(f"Ref {arg} has no value in the test")
            return values[arg]
        if key == "Fn::GetAtt":
            name = ".".join(arg) if isinstance(arg, list) else str(arg)
            if name not in values:
                raise UnresolvedError(f"Fn::GetAtt {name} has no value in the test")
            return values[name]
        if key == "Fn::Sub":
            if isinstance(arg, list):
                text, local = arg
                return _sub(text, {**values, **resolve(local, values, conditions)})
            return _sub(arg, values)
        if key == "Fn::If":
            condition, if_true, if_false = arg
            if conditions is None or condition not in conditions:
                raise UnresolvedError(f"Fn::If on condition {condition}, which the test gave no value for")
            return resolve(if_true if conditions[condition] else if_false, values, conditions)
    resolved_map = {key: resolve(value, values, conditions) for key, value in node.items()}
    return {key: value for key, value in resolved_map.items() if value is not None}
