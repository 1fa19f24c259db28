# Every user-facing command. `make demo` and `make test` set up everything on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
UV = $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) $(shell $(PYTHON) .ci/pip_sources.py)
WORKSPACE ?= $(CURDIR)/workspace/demo
DEMO_SUBJECTS ?= 30
# The demo's phantom grid (6 mm in-plane, 5 mm slices) and bootstrap (tiny rounds at N=5 and N=20, then 5 more).
# Seeded training in one process repeats exactly on the same number of threads: the demo's rounds are those of
# tests/test_bootstrap_loop.py, which trains them on one thread (the demo on all cores: close, not equal).
DEMO_PHANTOM := pixel_spacing_mm=6.0 'slice_thickness_mm.values=[5.0]' 'slice_thickness_mm.weights=[1.0]'
DEMO_LOOP := paths.workspace=$(WORKSPACE) bootstrap.experiment=tiny 'bootstrap.schedule=[5,20,25]' \
	bootstrap.warm_start_epochs=10 'bootstrap.train_overrides=["data_workers=0","model.seed=0"]'
SIMULATED := $(WORKSPACE)/annotation/incoming/simulated
# make heart: the contrast subjects' heart labels are taken from these full label maps (the demo's exact truth,
# which its simulated annotator's final labels equal; $(WORKSPACE)/annotation/final/labels works too).
HEART_LABELS ?= $(WORKSPACE)/truth_labels
REAL_CT := $(CURDIR)/../shared/data/ct_example/example_ct.nii.gz
REAL_SEG := $(CURDIR)/../shared/data/ct_example/example_ct_seg_fast.nii.gz
export XDG_RUNTIME_DIR ?= /tmp/runtime-$(shell id -u)
SYSTEM_PACKAGES ?= mesa-vulkan-drivers chromium chromium-driver
# make test's pytest-xdist workers; tests/conftest.py keeps the tests of each trained model on one of them.
TEST_WORKERS ?= 2
# make bench-qa's reference: TotalSegmentator's own preview in its own environment, with the fury < 2 and VTK
# it requires (they cannot live beside our fury 2) and Xvfb, under which its preview renders.
TSREF := .venv-tsref
TSREF_PACKAGES := 'fury==0.12.0' 'vtk==9.3.1' 'nibabel>=5' 'xvfbwrapper>=0.2'

.DEFAULT_GOAL := help
.PHONY: audit release robustness bootstrap-round help setup system-deps test demo heart phantom tables clean-demo bench-phantom bench-eval bench-qa bench-qa-flags bench-curate bench-train bench-heart bench-predict aging-demo bench-statistics bench-scale gpu-bundle gpu-check

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# uv installs the versions pip would, from the sources pip is configured with (.ci/pip_sources.py), in
	@# 44 s where pip takes 2.5 min on a fresh machine (most of it unpacking torch's 6 GB). It compiles the
	@# bytecode as pip does: with PYTHONDONTWRITEBYTECODE set, every process would compile torch again.
	$(PY) -m pip install --quiet --disable-pip-version-check uv 2> >(grep -v 'is ignored: it is neither' >&2)
	$(UV) -e '.[test]'
	@# PyRadiomics (the statistics' optional radiomics features) ships as source only and builds against the
	@# installed numpy; its build needs versioneer (pyproject.toml's radiomics extra says which versions).
	$(UV) versioneer && $(UV) --no-build-isolation 'pyradiomics==3.0.1'
	@touch $@

system-deps: ## Install the Debian packages for headless rendering and the browser test (as root), or say which are missing
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "Missing Debian packages:$$missing (needed for headless 3D rendering). Install them with: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi

setup: $(INSTALLED) system-deps ## Create .venv and install the project and its system packages (once)

test: setup ## Run the test suite on TEST_WORKERS pytest-xdist workers (each its share of the cores)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

phantom: setup ## Generate a phantom cohort: make phantom WORKSPACE=... DEMO_SUBJECTS=...
	$(PY) -m data_prep.phantom paths.workspace=$(WORKSPACE) n_subjects=$(DEMO_SUBJECTS)

demo: setup ## The whole pipeline on a phantom cohort in $(WORKSPACE): curation, QA, two bootstrap rounds, training, paper tables, release, audit (~15 min)
	$(PY) -m data_prep.phantom paths.workspace=$(WORKSPACE) n_subjects=$(DEMO_SUBJECTS) $(DEMO_PHANTOM)
	$(PY) -m data_prep.curate paths.workspace=$(WORKSPACE)
	@cat $(WORKSPACE)/reports/characteristics.md
	$(PY) -m data_prep.phantom.truth_labels paths.workspace=$(WORKSPACE)
	$(PY) -m annotation_loop.qa labels_dir=$(WORKSPACE)/truth_labels paths.workspace=$(WORKSPACE) render.ct_slice=true
	@echo "QA grids: $(WORKSPACE)/qa/grids/ ; review page: $(PY) -m annotation_loop.review paths.workspace=$(WORKSPACE)"
	@echo "== heart sub-parts carried from the contrast to the native scan of each exam (make heart trains and applies the heart model) =="
	$(PY) -m data_prep.heart_transfer paths.workspace=$(WORKSPACE) labels_dir=$(HEART_LABELS) other_classes=drop
	@echo "== annotation bootstrap: 5 drawn from scratch, then rounds at N=5 and N=20 (simulated annotator) =="
	$(PY) -m annotation_loop.start $(DEMO_LOOP)
	$(PY) -m annotation_loop.simulate $(DEMO_LOOP)
	$(PY) -m annotation_loop.ingest $(DEMO_LOOP) corrected_dir=$(SIMULATED)
	$(PY) -m annotation_loop.round $(DEMO_LOOP) n_reviewed=5
	$(PY) -m annotation_loop.simulate $(DEMO_LOOP)
	$(PY) -m annotation_loop.ingest $(DEMO_LOOP) corrected_dir=$(SIMULATED)
	$(PY) -m annotation_loop.round $(DEMO_LOOP) n_reviewed=20
	$(PY) -m annotation_loop.simulate $(DEMO_LOOP)
	$(PY) -m annotation_loop.ingest $(DEMO_LOOP) corrected_dir=$(SIMULATED)
	@cat $(WORKSPACE)/reports/bootstrap_rounds.md
	@echo "== the final model, trained on the bootstrap's final labels =="
	$(PY) -m totalseg_train +experiment=tiny paths.workspace=$(WORKSPACE) device=cpu
	$(PY) -m totalseg_train.report paths.workspace=$(WORKSPACE)
	@echo "paper tables: $(WORKSPACE)/reports/paper/index.html"
	@echo "review page: $(PY) -m annotation_loop.review paths.workspace=$(WORKSPACE) ; nnU-Net's output: $(WORKSPACE)/logs/<stage>/<time>/nnunet.log"
	@echo "== release: the reviewed subjects in TotalSegmentator's public layout, faces blurred, audited =="
	$(PY) -m annotation_loop.release paths.workspace=$(WORKSPACE)
	@echo "== data-protection audit: every file of the workspace searched for the input's identifying values =="
	$(PY) -m data_prep.audit paths.workspace=$(WORKSPACE)

heart: setup ## Heart sub-parts on a demo workspace (after make demo): label transfer (done by the demo), the heart_tiny model, applied to every subject
	@test -f $(WORKSPACE)/curated/subjects.csv -a -d $(HEART_LABELS) || \
	  { echo "make heart needs a curated phantom workspace with labels in $(HEART_LABELS): run make demo first" >&2; exit 1; }
	$(PY) -m data_prep.heart_transfer paths.workspace=$(WORKSPACE) labels_dir=$(HEART_LABELS) other_classes=drop
	$(PY) -m totalseg_train +experiment=heart_tiny paths.workspace=$(WORKSPACE)
	$(PY) -m data_prep.heart_transfer.apply paths.workspace=$(WORKSPACE) model=$(WORKSPACE)/results/heart_tiny device=cpu
	@echo "heart sub-parts of every subject: $(WORKSPACE)/heart/predicted (the bootstrap loop's start maps and rounds use them)"

release: setup ## The reviewed subjects of $(WORKSPACE) as a dataset in TotalSegmentator's public layout ($(WORKSPACE)/release: faces blurred, meta.csv, dataset card), audited (exit 1 on a finding)
	$(PY) -m annotation_loop.release paths.workspace=$(WORKSPACE)

audit: setup ## Search every file of $(WORKSPACE) for identifying values of its DICOM input and for withdrawn subjects (exit 1 on a finding)
	$(PY) -m data_prep.audit paths.workspace=$(WORKSPACE)

robustness: setup ## Seeded faults: 420 broken NIfTI inputs, 120 broken DICOM series, then 20 kill -9 per stage, each rerun and compared with an uninterrupted run (~1 h)
	$(PY) -m totalseg_train.robustness --per-kind 20
	$(PY) -m data_prep.curate.robustness --per-kind 20
	$(PY) -m annotation_loop.fault_kills --kills 20

tables: setup ## The paper's tables and figures from the runs in $(WORKSPACE), beside the published values: reports/paper/index.html (reads only)
	$(PY) -m totalseg_train.report paths.workspace=$(WORKSPACE)

bench-phantom: setup ## Time the generation of 30 phantom subjects at 3 mm
	@d=$$(mktemp -d); $(PY) -m data_prep.phantom paths.workspace=$$d n_subjects=30 workers=2; rm -rf $$d

bench-eval: setup ## Time evaluation (Dice + NSD) of a 1.5 mm torso-sized subject: reference vs ours vs I/O floor
	$(PY) -m totalseg_train.evaluate.bench

$(TSREF)/.installed:
	@$(MAKE) --no-print-directory system-deps SYSTEM_PACKAGES=xvfb
	@test -x $(TSREF)/bin/python || $(PYTHON) -m venv $(TSREF)
	$(TSREF)/bin/python -m pip install --quiet --disable-pip-version-check $(TSREF_PACKAGES) \
	  2> >(grep -v 'is ignored: it is neither' >&2)
	@# Its preview needs none of TotalSegmentator's other dependencies (torch, nnU-Net, ...).
	$(TSREF)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps 'TotalSegmentator==2.18.0' \
	  2> >(grep -v 'is ignored: it is neither' >&2)
	@touch $@

bench-qa: setup $(TSREF)/.installed ## Our QA sheets in a cohort run vs TotalSegmentator's own preview, side by side on three real label maps (~5 min)
	$(PY) -m annotation_loop.qa.bench --reference-python $(TSREF)/bin/python --example $(CURDIR)/../shared/data/ct_example \
	  --out $(CURDIR)/workspace/bench_qa.json

bench-qa-flags: setup ## Planted errors: the QA flags' recall per error kind and false alarms on the demo's 6 mm phantom, a 3 mm phantom and the real example (~10 min)
	@d=$$(mktemp -d); trap 'rm -rf "$$d"' EXIT; \
	$(PY) -m data_prep.phantom paths.workspace=$$d/demo n_subjects=$(DEMO_SUBJECTS) $(DEMO_PHANTOM) >/dev/null && \
	$(PY) -m data_prep.phantom paths.workspace=$$d/fine n_subjects=16 'slice_thickness_mm.values=[3.0]' \
	  'slice_thickness_mm.weights=[1.0]' >/dev/null && \
	$(PY) -m annotation_loop.qa.flag_bench --cohort demo_6mm=$$d/demo/raw/truth/index.csv \
	  --cohort phantom_3mm=$$d/fine/raw/truth/index.csv --real $(REAL_CT) $(REAL_SEG) --out $(CURDIR)/workspace/bench_qa_flags.json

bootstrap-round: setup ## One annotation bootstrap round: make bootstrap-round [N=100] [WORKSPACE=...]
	$(PY) -m annotation_loop.round paths.workspace=$(WORKSPACE) $(if $(N),n_reviewed=$(N))

clean-demo: ## Remove the demo workspace
	rm -rf $(WORKSPACE)

bench-curate: setup ## Header scan files/s (first scan and an unchanged archive again, from the cache) and conversion series/s on a 16-patient phantom, beside pydicom's bare loop
	$(PY) -m data_prep.curate.bench --subjects 16 --workers 2

bench-scale: setup ## Per-subject cost of every per-subject stage, QA as 1, 2 and 4 local jobs and two training parts as two, each beside submitit's plain local launcher, an estimate for 1204 subjects on 16 jobs (~5 min)
	$(PY) -m annotation_loop.scale_bench --subjects 12 --jobs 1 2 4

bench-train: setup ## s/iteration of tiny and fast, engine overhead vs nnU-Net, tiny's test Dice after 5 min (20 phantom subjects; ~25 min)
	@d=$$(mktemp -d); trap 'rm -rf "$$d"' EXIT; \
	$(PY) -m data_prep.phantom paths.workspace=$$d n_subjects=20 workers=2 >/dev/null && \
	$(PY) -m data_prep.curate paths.workspace=$$d progress=false >/dev/null && \
	$(PY) -m data_prep.phantom.truth_labels paths.workspace=$$d >/dev/null && \
	$(PY) -m totalseg_train.engine.bench paths.workspace=$$d out=$(CURDIR)/workspace/bench_train.json

bench-heart: setup ## Heart label transfer on 40 phantom patients (3 mm): Dice per class, centre error, s/pair vs header-only (~3 min)
	@d=$$(mktemp -d); trap 'rm -rf "$$d"' EXIT; \
	$(PY) -m data_prep.phantom paths.workspace=$$d n_subjects=40 workers=2 >/dev/null && \
	$(PY) -m data_prep.curate paths.workspace=$$d progress=false >/dev/null && \
	$(PY) -m data_prep.phantom.truth_labels paths.workspace=$$d >/dev/null && \
	$(PY) -m data_prep.heart_transfer.bench --workspace $$d --out $(CURDIR)/workspace/bench_heart.json

gpu-bundle: setup ## (here) The packages gpu-check needs on a lent GPU machine, for its Python 3.12: gpu_bundle/site.tar.xz (~40 MB)
	$(PY) -m data_prep.gpu_bundle --out gpu_bundle

gpu-check: ## (on a lent GPU machine, gpu_bundle carried) fast and a highres part trained a few epochs, a whole-body prediction: s/iteration, GPU memory and runtime into OUT (~6 min)
	@test -f gpu_bundle/site.tar.xz || { echo "gpu_bundle/site.tar.xz missing: run make gpu-bundle here and carry gpu_bundle" >&2; exit 1; }
	rm -rf /tmp/gpu_site && mkdir -p /tmp/gpu_site && tar -xJf gpu_bundle/site.tar.xz -C /tmp/gpu_site
	PYTHONPATH=/tmp/gpu_site:$(CURDIR) python3 -m data_prep.gpu_check --out $${OUT:-$(CURDIR)/workspace/gpu_check} --work /tmp/gpu_check

bench-predict: setup ## Every trained model of $(WORKSPACE) predicts its smallest, median and largest CT: time, peak RAM and GPU memory beside the paper's
	$(PY) -m totalseg_train.runtime paths.workspace=$(WORKSPACE)

AGING_WORKSPACE ?= $(CURDIR)/workspace/aging_demo
AGING_SUBJECTS ?= 300
AGING_STUDY := $(AGING_WORKSPACE)/phantom_study
aging-demo: setup ## Aging study on a phantom cohort with planted age effects: cohort -> statistics -> figures (~3 min)
	$(PY) -m data_prep.phantom.study paths.workspace=$(AGING_WORKSPACE) n_subjects=$(AGING_SUBJECTS)
	$(PY) -m totalseg_train.statistics paths.workspace=$(AGING_WORKSPACE) labels_dir=$(AGING_STUDY)/labels \
	  images_dir=$(AGING_STUDY)/images subjects_csv=$(AGING_STUDY)/subjects.csv
	$(PY) -m totalseg_train.aging paths.workspace=$(AGING_WORKSPACE) by_sex=true
	@echo "figures and tables: $(AGING_WORKSPACE)/reports/aging/"

bench-statistics: setup ## One 104-class 1.5 mm whole-body subject: one-pass statistics vs the per-class loop, cohort estimate (~5 min)
	@d=$$(mktemp -d); trap 'rm -rf "$$d"' EXIT; \
	$(PY) -m data_prep.phantom.study paths.workspace=$$d out=$$d/study n_subjects=1 pixel_spacing_mm=1.5 thickness_mm=1.5 \
	  workers=1 progress=false >/dev/null && \
	$(PY) -m totalseg_train.statistics.bench --labels $$d/study/labels/study0000.nii.gz \
	  --image $$d/study/images/study0000.nii.gz --out $(CURDIR)/workspace/bench_statistics.json
