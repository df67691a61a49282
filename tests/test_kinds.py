"""The registry of job kinds (hcli/kinds): one module per kind, consistent with the spec."""

from __future__ import annotations

import typing

import pytest

from hcli.contract import Results, results_model
from hcli.identity import KIND_SECTIONS
from hcli.kinds import all_kinds, get_kind, implemented_kinds, load_attr
from hcli.spec import KINDS, Spec
from hcli.spec._schema import Kind


def test_registry_declares_exactly_the_spec_kinds():
    assert tuple(all_kinds()) == KINDS == typing.get_args(Kind)


@pytest.mark.parametrize("name", list(all_kinds()))
def test_each_kind_names_what_exists(name: str):
    info = get_kind(name)
    for section in info.sections:
        assert section in Spec.model_fields, f"{name}: spec section {section!r} missing"
    assert KIND_SECTIONS[name] == info.sections
    if info.results_model:
        assert issubclass(load_attr(info.results_model), Results)
        assert results_model(name) is load_attr(info.results_model)
    if info.workload:
        module, _, attr = info.workload.partition(":")
        assert module.startswith("jobs.") and attr  # imported only where the job runs


def test_runnable_kinds_have_workloads():
    assert set(implemented_kinds()) >= {"probe", "multiclass"}
    assert all(get_kind(k).workload for k in implemented_kinds())


def test_unknown_kind_is_a_one_line_error():
    from hcli.errors import SpecError

    with pytest.raises(SpecError, match="kind='nope' is not a job kind; choose one of probe"):
        get_kind("nope")
