# The two commands a newcomer runs: `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
HCLI   := $(VENV)/bin/hcli
RUNS   ?= runs
export HCLI_RUNS_DIR := $(abspath $(RUNS))

.PHONY: install demo test test-fast lint bench clean-demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# torch 2.14.1 / torchvision 0.29.1 come from this machine's wheel cache when present.
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	# An editable install leaves hcli/ uncompiled, and with PYTHONDONTWRITEBYTECODE set (as on
	# these machines) every command would compile it again: ~40 ms of each `hcli status`.
	$(PY) -m compileall -q hcli jobs > /dev/null
	touch $@

install: $(VENV)/.installed

# doctor and the probe check the data the demo trains on (quickstart's data.root).
demo: install
	$(HCLI) data synth --out data/synth --n 120 --seed 0 --size 256
	$(HCLI) data prepare --source data/synth --out data/synth-prepared
	$(HCLI) doctor --config quickstart
	$(HCLI) data stats data/synth-prepared --plot reports/synth-stats.png
	$(HCLI) submit probe --foreground -o data.root=data/synth-prepared
	$(HCLI) submit multiclass --config quickstart --foreground
	$(HCLI) status
	$(HCLI) collect --out reports/demo

lint: install
	$(VENV)/bin/ruff check hcli jobs tests benchmarks
	$(VENV)/bin/mypy

test: install lint  # everything: lint, mypy, and the `slow` and `slurm` tests (~12 min)
	$(VENV)/bin/pytest -q --durations=25

# The edit-test loop (< 3 min): no `slow` tests, no `slurm` tests, no lint. Needs no SLURM.
test-fast: install
	$(VENV)/bin/pytest -q -m "not slow and not slurm"

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-demo:
	rm -rf data/synth data/synth-prepared $(RUNS) reports

timm-names: install  # the backbone names the spec accepts without importing timm
	$(PY) -c "import timm; print('# timm', timm.__version__, 'model names; regenerate: make timm-names'); print('\n'.join(timm.list_models()))" > hcli/resources/timm_models.txt
