"""What infra/template.yaml configures that costs money: memory, alarms, dashboard, retention."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "infra" / "template.yaml"
FUNCTIONS = ("generator", "transformer", "compactor")
RESOURCE = {
    "generator": "GeneratorFunction",
    "transformer": "TransformerFunction",
    "compactor": "CompactorFunction",
}


class _TemplateLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type hints
    """YAML with CloudFormation's short tags (!Ref, !Sub, ...) read as {"Ref": ...} mappings."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        return {name: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {name: loader.construct_sequence(node, deep=True)}
    return {name: loader.construct_mapping(node, deep=True)}


_TemplateLoader.add_multi_constructor("!", _intrinsic)


@dataclass(frozen=True)
class Alarm:
    name: str
    metrics: int  # alarm metrics it is billed for: 1, or each metric of a metric-math alarm
    watches: str | None  # the function whose metric it watches, if any


@dataclass(frozen=True)
class Stack:
    memory_mb: Mapping[str, int]
    ephemeral_mb: Mapping[str, int]
    architecture: Mapping[str, str]
    environment: Mapping[str, Mapping[str, str]]
    log_retention_days: int
    raw_retention_days: int
    alarms: tuple[Alarm, ...]
    dashboards: int
    dashboard_metrics: int
    glue_objects: int


def read_stack(path: Path = TEMPLATE) -> Stack:
    """Memory, architecture, environment, retention, alarms and dashboard of the three functions' stack."""
    template = yaml.load(path.read_text(encoding="utf-8"), Loader=_TemplateLoader)  # noqa: S506 - a SafeLoader
    defaults = {name: str(spec.get("Default", "")) for name, spec in template["Parameters"].items()}
    resources: dict[str, Any] = template["Resources"]

    def value(node: Any) -> str:
        if isinstance(node, dict) and "Ref" in node:
            return defaults.get(str(node["Ref"]), str(node["Ref"]))
        return str(node)

    memory, ephemeral, arch, env = {}, {}, {}, {}
    for function, resource in RESOURCE.items():
        props = resources[resource]["Properties"]
        memory[function] = int(props.get("MemorySize", 128))
        ephemeral[function] = int(props.get("EphemeralStorage", {}).get("Size", 512))
        arch[function] = str(props.get("Architectures", ["x86_64"])[0])
        variables = props.get("Environment", {}).get("Variables", {})
        env[function] = {k: value(v) for k, v in variables.items()}
    alarms = []
    for name, resource in resources.items():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = resource["Properties"]
        metrics = sum(1 for m in props["Metrics"] if "MetricStat" in m) if "Metrics" in props else 1
        text = json.dumps(props)
        watches = next((f for f, r in RESOURCE.items() if f'"{r}"' in text), None)
        alarms.append(Alarm(name, metrics, watches))
    dashboards = [r for r in resources.values() if r["Type"] == "AWS::CloudWatch::Dashboard"]
    dashboard_metrics = 0
    for dashboard in dashboards:
        body = dashboard["Properties"]["DashboardBody"]
        text = body.get("Fn::Sub", "") if isinstance(body, dict) else str(body)
        dashboard_metrics += text.count('["EcommercePipeline"') + text.count('["AWS/')
    lifecycle = resources["DataBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    raw_rule = next(r for r in lifecycle if r.get("Prefix") == "raw/")
    glue = sum(1 for r in resources.values() if r["Type"] in {"AWS::Glue::Database", "AWS::Glue::Table"})
    return Stack(
        memory_mb=memory,
        ephemeral_mb=ephemeral,
        architecture=arch,
        environment=env,
        log_retention_days=int(value(resources["GeneratorLogGroup"]["Properties"]["RetentionInDays"])),
        raw_retention_days=int(value(raw_rule["ExpirationInDays"])),
        alarms=tuple(alarms),
        dashboards=len(dashboards),
        dashboard_metrics=dashboard_metrics,
        glue_objects=glue,
    )
