"""Studies: several stages of runs, planned (`hcli plan`) and submitted as one pipeline
(`hcli submit pipeline`); see docs/study.md (and docs/planning.md for `hcli bench`)."""

from hcli.study._expand import expand_study
from hcli.study._schema import Stage, Study, load_study

__all__ = ["Stage", "Study", "expand_study", "load_study"]
