"""Media storage tiers in Kubernetes: spec.media.tiers of the ParleyRegion (the
CRD's schema and CEL rule, the operator's parsing and rendered config, which
svc_media loads into its bucket's lifecycle rules) and the chart's
region.spec.media.tiers (values.schema.json and the template's refusal), all
keeping to what S3 runs: STANDARD_IA not before day 30, GLACIER not before
day 90 and not sooner than 30 days after STANDARD_IA."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from parley_core import config as core_config
from parley_core.config import Settings, load_settings
from parley_operator import spec as operator_spec
from parley_operator.crd_storage import TIERS_RULE
from parley_operator.crds import region_crd
from parley_operator.service_config import service_config
from parley_operator.spec import SpecError, parse_region
from svc_media.domain.tiers import lifecycle_plan
from svc_media.storage.lifecycle import TIERS_RULE as LIFECYCLE_TIERS_RULE
from svc_media.storage.lifecycle import own_rules
from tests.unit.test_helm_chart import CHART, helm, render, run_helm, values_schema

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["helm"]  # the session fixture, from the chart's tests


def crd_schema() -> dict[str, Any]:
    schema: dict[str, Any] = region_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def tiers_schema() -> dict[str, Any]:
    node: dict[str, Any] = crd_schema()["properties"]["spec"]["properties"]["media"]
    return node["properties"]["tiers"]


def media_spec(**tiers: int) -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "operator" / "examples" / "region-media.yaml").read_text())
    spec: dict[str, Any] = loaded["spec"]
    spec["media"]["tiers"] = dict(tiers)
    return spec


def crd_errors(spec: dict[str, Any]) -> list[str]:
    resource = {"apiVersion": "parley.dev/v1alpha1", "kind": "ParleyRegion", "spec": spec}
    validator = jsonschema.Draft4Validator(crd_schema())
    return [e.message for e in validator.iter_errors(resource)]


def cel_holds(rule: str, value: dict[str, Any]) -> bool:
    """The tiers rule evaluated as the API server would: it uses only has(),
    field access, integers, ==, >=, + and ||, translated one to one."""
    python = re.sub(r"!has\(self\.(\w+)\)", r"('\1' not in self)", rule)
    python = re.sub(r"self\.(\w+)", r"self['\1']", python).replace("||", " or ")
    assert re.fullmatch(r"[\w\s'()\[\]=<>+!or]*", python.replace("not in", "")), python
    return bool(eval(python, {}, {"self": value}))


# (infrequentAfterDays, archiveAfterDays) -> whether S3 could run it
SCHEDULES = [
    ((0, 0), True),
    ((30, 0), True),
    ((29, 0), False),
    ((1, 0), False),
    ((0, 90), True),
    ((0, 89), False),
    ((30, 90), True),
    ((60, 90), True),
    ((61, 90), False),
    ((100, 120), False),
    ((100, 130), True),
    ((36_501, 0), False),
]


@pytest.mark.parametrize(("days", "runnable"), SCHEDULES)
def test_the_crd_and_the_operator_accept_exactly_the_schedules_s3_runs(
    days: tuple[int, int], runnable: bool
) -> None:
    infrequent, archive = days
    spec = media_spec(infrequentAfterDays=infrequent, archiveAfterDays=archive)
    schema_ok = crd_errors(spec) == []
    rule_ok = cel_holds(TIERS_RULE, spec["media"]["tiers"])
    assert (schema_ok and rule_ok) == runnable
    if runnable:
        parse_region("ap-south", "parley", spec)
    else:
        with pytest.raises(SpecError, match=r"spec\.media\.tiers\.(infrequent|archive)AfterDays"):
            parse_region("ap-south", "parley", spec)
    # The service's own validation agrees (the config is what the pods load).
    try:
        core_config.MediaTierSettings(infrequent_after_days=infrequent, archive_after_days=archive)
    except ValueError:
        assert not runnable
    else:
        assert runnable


def test_the_rule_is_on_the_tiers_object_and_fields_may_be_left_out() -> None:
    node = tiers_schema()
    assert node["x-kubernetes-validations"][0]["rule"] == TIERS_RULE
    assert cel_holds(TIERS_RULE, {})
    assert cel_holds(TIERS_RULE, {"archiveAfterDays": 90})
    assert crd_errors(media_spec()) == []
    assert crd_errors(media_spec(minObjectBytes=-1)) != []


def test_the_operators_floors_are_the_services() -> None:
    for name in ("MIN_INFREQUENT_DAYS", "MIN_ARCHIVE_DAYS", "MIN_DAYS_IN_INFREQUENT"):
        assert getattr(operator_spec, name) == getattr(core_config, name), name


def test_the_schedule_reaches_svc_medias_lifecycle_rules(tmp_path: Path) -> None:
    spec = media_spec(infrequentAfterDays=45, archiveAfterDays=200, minObjectBytes=1 << 20)
    rendered = service_config(parse_region("ap-south", "parley", spec), "media")
    assert rendered["media"]["tiers"] == {
        "infrequent_after_days": 45,
        "archive_after_days": 200,
        "min_object_bytes": 1 << 20,
    }
    path = tmp_path / "media.yaml"
    path.write_text(yaml.safe_dump(rendered))
    settings: Settings = load_settings(path)
    (tiers,) = [
        r for r in own_rules(lifecycle_plan(settings.media)) if r["ID"] == LIFECYCLE_TIERS_RULE
    ]
    assert tiers["Filter"]["And"]["ObjectSizeGreaterThan"] == 1 << 20
    assert tiers["Transitions"] == [
        {"Days": 45, "StorageClass": "STANDARD_IA"},
        {"Days": 200, "StorageClass": "GLACIER"},
    ]
    # Left out, nothing is rendered: svc_media's defaults apply.
    plain = copy.deepcopy(spec)
    del plain["media"]["tiers"]
    assert (
        "tiers" not in service_config(parse_region("ap-south", "parley", plain), "media")["media"]
    )


def test_the_values_schema_refuses_what_the_crd_refuses() -> None:
    node = values_schema()["properties"]["region"]["properties"]["spec"]["properties"]["media"]
    validator = jsonschema.Draft7Validator(node["properties"]["tiers"])
    for (infrequent, archive), _ in SCHEDULES:
        errors = list(
            validator.iter_errors({"infrequentAfterDays": infrequent, "archiveAfterDays": archive})
        )
        # The cross-field rule is the template's (below); the floors are the schema's.
        floors_ok = infrequent in (0,) or 30 <= infrequent <= 36_500
        floors_ok = floors_ok and (archive == 0 or 90 <= archive <= 36_500)
        assert (errors == []) == floors_ok, (infrequent, archive)
    assert list(validator.iter_errors({"minObjectBytes": 0})) == []
    assert list(validator.iter_errors({"sizes": 1})) != []


def test_the_chart_passes_the_schedule_to_the_region(helm: Path) -> None:
    (region,) = [d for d in render(helm, "media") if d["kind"] == "ParleyRegion"]
    assert region["spec"]["media"]["tiers"] == {
        "infrequentAfterDays": 30,
        "archiveAfterDays": 365,
        "minObjectBytes": 131072,
    }
    (default,) = [d for d in render(helm, "defaults") if d["kind"] == "ParleyRegion"]
    assert default["spec"]["media"]["tiers"] == {
        "infrequentAfterDays": 30,
        "archiveAfterDays": 0,
        "minObjectBytes": 131072,
    }
    parse_region("ap", "parley-ap", {**region["spec"], "region": "ap"})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (("infrequentAfterDays=29",), "infrequentAfterDays"),
        (("archiveAfterDays=60",), "archiveAfterDays"),
        (
            ("infrequentAfterDays=100", "archiveAfterDays=120"),
            "archiveAfterDays (120) must be at least infrequentAfterDays + 30 (130)",
        ),
    ],
)
def test_the_chart_refuses_a_schedule_s3_cannot_run(
    helm: Path, settings: tuple[str, ...], message: str
) -> None:
    args: list[str] = [
        "template",
        "parley",
        str(CHART),
        "-f",
        str(CHART / "ci" / "media-values.yaml"),
    ]
    for setting in settings:
        args += ["--set", f"region.spec.media.tiers.{setting}"]
    result = run_helm(helm, *args)
    assert result.returncode != 0
    assert message in result.stderr
    # The same schedule with STANDARD_IA off is fine.
    if len(settings) == 2:
        args += ["--set", "region.spec.media.tiers.infrequentAfterDays=0"]
        assert run_helm(helm, *args).returncode == 0
