"""The layer the stack attaches, the dev pins and docs/layer.md name the same AWS SDK for pandas release.

Which layer version holds what is established in docs/layer.md (from AWS SDK for pandas' own files and
issues); these tests keep the three places that state it from drifting apart.
"""

from __future__ import annotations

import re

from tests.conftest import ROOT
from tests.infra.cfn import load_template, parameter_defaults

TEMPLATE = load_template()
LAYER_ARN = re.compile(
    r"^arn:aws:lambda:(?P<region>[a-z0-9-]+):336392948345:layer:AWSSDKPandas-Python(?P<python>\d+):(?P<version>\d+)$"
)


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements-dev.txt").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.\[\],-]+)==([^;\s]+)", line)
        if match:
            pins.setdefault(match[1].lower(), match[2])
    return pins


def test_the_default_layer_is_us_east_1s_awssdkpandas_layer_for_the_functions_python() -> None:
    arn = parameter_defaults(TEMPLATE)["PandasLayerArn"]
    match = LAYER_ARN.match(arn)

    assert match, arn
    assert match["region"] == "us-east-1"
    for function in ("TransformerFunction", "CompactorFunction"):
        runtime = TEMPLATE["Resources"][function]["Properties"]["Runtime"]
        assert runtime == f"python{match['python'][0]}.{match['python'][1:]}"


def test_the_stack_the_pins_and_the_layer_doc_name_the_same_release_and_layer() -> None:
    arn = parameter_defaults(TEMPLATE)["PandasLayerArn"]
    description = TEMPLATE["Parameters"]["PandasLayerArn"]["Description"]
    doc = (ROOT / "docs" / "layer.md").read_text(encoding="utf-8")
    release = _pins()["awswrangler"]

    assert f"AWS SDK for pandas {release})" in description
    assert arn in doc
    assert f"AWS SDK for pandas {release}" in doc
    assert f"`awswrangler=={release}`" in doc


def test_pyarrow_is_pinned_to_the_arrow_version_the_layer_builds() -> None:
    doc = (ROOT / "docs" / "layer.md").read_text(encoding="utf-8")
    pinned = _pins()["pyarrow"]

    assert f"`ARROW_VERSION={pinned}`" in doc
