"""curate(cfg): scan, judge, choose, pseudonymise, convert and report, resumably.

On a cluster the conversion splits into shards (``shard.index`` / ``shard.count``, by subject id). Every job
plans the whole cohort (header scan, consent gate, rules, pseudonyms) under one plan lock, so that the jobs
take their turn writing the pseudonym key and the header cache and each later one finds the headers parsed
and the ids assigned; it then converts its own subjects and writes ``<curated>/shards/conversions_<i>of<n>.csv``
(subject ids and what happened, nothing identifying). The job that writes the last part, or any later run
without a shard, curates the whole cohort: every image is current, so it converts only what a shard failed
to, and writes the tables and the key's report as one run would have.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig
from tqdm import tqdm

from totalseg_train.report.characteristics import characteristics_table, to_markdown
from data_prep.curate.convert import convert_series, is_current
from data_prep.curate.pseudonyms import PseudonymStore
from data_prep.curate.consent import consent_given, consenting_patients, read_consent
from data_prep.curate.rules import EXCLUDED, INCLUDED, apply_rules, describe
from data_prep.curate.scan import scan_tree
from data_prep.curate.scan_cache import HeaderCache
from data_prep.curate.selection import select_series
from data_prep.curate.series import group_series
from data_prep.curate.vocabulary import Vocabulary
from totalseg_train.atomic import remove_stale_temporaries, write_table, write_text
from totalseg_train.images import NIFTI_SUFFIX, nifti_path
from totalseg_train.shards import Shard, run_sharded
from totalseg_train.stage_lock import stage_lock

log = logging.getLogger(__name__)

SERIES_TABLE = "series.parquet"
SUBJECTS_TABLE = "subjects.csv"
SUMMARY_FILE = "curation.json"
WITHDRAWN_TABLE = "withdrawn.csv"           # subject ids retired because consent was withdrawn (no other data)
PROBLEMS_FILE = "unreadable_files.csv"       # in the private folder: paths may name patients
ERRORS_FILE = "conversion_errors.csv"        # in the private folder: error messages may hold paths
CHARACTERISTICS = "characteristics"          # .md and .csv in the reports folder
UNREADABLE = "unreadable"
PLAN_LOCK = "curate-plan"                    # the jobs of a sweep plan one after the other (key, header cache)
CONVERSIONS_PART = "conversions"             # a shard's part: subject_id, status (converted | up to date | failed)

SUBJECT_COLUMNS = [
    "subject_id", "patient", "exam", "series_id", "sex", "age", "study_year", "site", "manufacturer", "model", "kvp",
    "kernel", "kernel_class", "slice_thickness", "slice_spacing", "n_slices", "contrast_phase", "contrast",
    "body_region", "paired_subject_id", "pair_same_frame",
]
# series.parquet: everything extracted from the headers except what identifies the patient.
SERIES_COLUMNS = [
    "series_id", "subject_id", "patient", "exam", "site", "decision", "reason", "detail", "modality", "image_type",
    "series_number", "study_description", "series_description", "protocol_name", "sex", "age", "study_year",
    "manufacturer", "model", "kvp", "kernel", "kernel_class", "slice_thickness", "slice_spacing",
    "spacing_deviation", "duplicate_positions", "stack_tilt_deg", "gantry_tilt", "n_files", "n_slices", "rows",
    "columns", "pixel_spacing_row", "pixel_spacing_col", "frames", "fov_mm", "z_extent_mm", "lateral_offset_mm",
    "contrast_agent", "contrast_phase", "contrast", "phase_group", "body_part", "body_region", "region_source",
    "paired_series_id", "paired_subject_id", "pair_same_frame", "content_hash", "transfer_syntax",
]


@dataclass
class CurationSummary:
    curated: Path
    n_files: int
    n_problem_files: int
    n_series: int
    n_subjects: int
    n_converted: int                 # images written by this run
    n_removed: int                   # images removed (consent withdrawn, excluded by annotators)
    withdrawn: list[str]             # subject ids retired (consent withdrawn), this run and earlier ones
    n_without_consent: int           # series stopped by the consent gate: all that is kept of them
    scan_seconds: float
    convert_seconds: float
    series: pd.DataFrame             # series.parquet
    subjects: pd.DataFrame           # subjects.csv
    characteristics: pd.DataFrame
    reasons: dict[str, int] = field(default_factory=dict)
    n_parsed: int = 0                # files whose header this run parsed (the others: unchanged, from the cache)
    shard: Shard = Shard()           # the share this run converted (the whole cohort: tables written)


def read_exclusions(path: str | Path | None, subject_column: str, note_column: str) -> dict[str, str]:
    """subject_id -> annotator's note; empty when no exclusion list is configured."""
    if not path:
        return {}
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: exclusion list not found (dataset.exclusions_csv)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if subject_column not in table.columns:
        raise ValueError(f"{path}: exclusion list lacks the column {subject_column!r}; it has {list(table.columns)}")
    notes = table[note_column] if note_column in table.columns else [""] * len(table)
    return dict(zip(table[subject_column].str.strip(), notes))


def _assign_people(series: pd.DataFrame, store: PseudonymStore, max_age: float) -> pd.DataFrame:
    """Pseudonymous ids for the series, patients, exams and sites (all of consenting patients)."""
    out = series.copy()
    out["series_id"] = out["series_key"].map(store.assign("series", out["series_key"]))
    patients = store.assign("patient", out["patient_id"])
    exams = store.assign("exam", out["study_key"])
    sites = store.assign("site", out.loc[out["institution"] != "", "institution"])
    out["patient"] = out["patient_id"].map(patients)
    out["exam"] = out["study_key"].map(exams)
    out["site"] = out["institution"].map(sites).fillna("unknown")
    out["age"] = out["age"].clip(upper=max_age)
    return out


def _forget_without_consent(gone: pd.DataFrame, store: PseudonymStore) -> None:
    """Series stopped by the consent gate leave the key: identifying originals of a patient who withdrew
    are dropped and their ids retired, never reused."""
    retired = store.forget_subjects(gone["series_key"])
    store.forget("series", gone["series_key"])
    store.forget("patient", gone["patient_id"])
    store.forget("exam", gone["study_key"])
    if retired:
        log.info("consent no longer given: %d curated subjects retired (%s)", len(retired), ", ".join(retired))


def _exclude(series: pd.DataFrame, mask, reason: str, details) -> None:
    series.loc[mask, "decision"] = EXCLUDED
    series.loc[mask, "reason"] = reason
    series.loc[mask, "detail"] = details


def _convert(todo: pd.DataFrame, files: dict[str, list[str]], root: str, images: Path, provenance: Path,
             cfg: DictConfig) -> tuple[int, dict[str, str]]:
    """Convert the series of ``todo`` in a process pool; returns (converted, {series_key: error})."""
    c = cfg.convert
    jobs = {row.series_key: (root, files[row.series_key], str(nifti_path(images, row.subject_id)),
                             str(provenance / f"{row.subject_id}.json"), row.subject_id, row.content_hash,
                             c.orientation, float(c.min_hu), float(c.max_hu)) for row in todo.itertuples()}
    failed: dict[str, str] = {}
    bar = tqdm(total=len(jobs), desc="conversion", unit="series", disable=not cfg.progress)
    workers = max(1, int(cfg.workers))
    if workers == 1 or len(jobs) <= 1:
        for key, args in jobs.items():
            try:
                convert_series(*args)
            except Exception as exc:  # noqa: BLE001 - one bad series never stops the cohort
                failed[key] = f"{type(exc).__name__}: {exc}"
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(convert_series, *args): key for key, args in jobs.items()}
            for future in as_completed(futures):
                exc = future.exception()
                if exc is not None:
                    failed[futures[future]] = f"{type(exc).__name__}: {exc}"
                bar.update()
    bar.close()
    return len(jobs) - len(failed), failed


def _remove_uncurated(images: Path, provenance: Path, keep: set[str]) -> int:
    """Delete images and provenance of subjects not in ``keep`` (consent withdrawn, excluded); returns images removed."""
    removed = 0
    for folder, suffix in ((images, NIFTI_SUFFIX), (provenance, ".json")):
        for path in folder.glob(f"*{suffix}") if folder.exists() else []:
            if path.name[: -len(suffix)] not in keep:
                path.unlink()
                removed += suffix == NIFTI_SUFFIX
    return removed


def series_table(series: pd.DataFrame, subject_ids: dict[str, str]) -> pd.DataFrame:
    """series.parquet: pseudonymous ids, pairs among the included series, nothing identifying."""
    out = series.copy()
    included = out["decision"] == INCLUDED
    ids = dict(zip(out["series_key"], out["series_id"]))
    paired = out["paired_series_key"].where(out["paired_series_key"].isin(set(out.loc[included, "series_key"])), "")
    out["paired_series_id"] = paired.map(lambda key: ids.get(key, ""))  # a dict's map gives NaN where unpaired
    out["paired_subject_id"] = paired.map(lambda key: subject_ids.get(key, "")).where(included, "")
    # Labels carried from one series of a pair to the other start from the headers' alignment, which
    # holds only in one frame of reference; the UIDs themselves stay private.
    frame_of = dict(zip(out["series_key"], out["frame_uid"]))
    out["pair_same_frame"] = [
        "" if not key else str(bool(frame) and frame_of.get(key) == frame).lower()
        for key, frame in zip(paired, out["frame_uid"])]
    for column in ("age", "study_year", "series_number", "kvp", "n_slices", "rows", "columns", "frames",
                   "duplicate_positions"):
        out[column] = pd.to_numeric(out[column], errors="coerce").round().astype("Int64")
    table = out[SERIES_COLUMNS].copy()
    return table.sort_values("series_id").reset_index(drop=True)


def curate(cfg: DictConfig) -> CurationSummary:
    """Run curation as configured; safe to re-run (finished conversions are kept). One run at a time per
    curated folder and shard (StageRunning otherwise); ``shard`` splits the conversion (see the module)."""
    return run_sharded(lambda part: _curate(cfg, part), Shard.from_config(cfg.get("shard")), cfg.paths.curated,
                       "curate", CONVERSIONS_PART)


@dataclass
class _Plan:
    scan: object                     # scan_tree's result
    files: dict[str, list[str]]      # series_key -> its files
    series: pd.DataFrame             # every series of consenting patients, judged, with its pseudonymous ids
    subject_ids: dict[str, str]      # series_key -> subject id (the key's, this run's and earlier ones)
    n_without_consent: int
    cache: HeaderCache | None
    stopped: pd.DataFrame            # series_key, patient_id of the series the consent gate stopped (for the cache)
    withdrawn: list[str]             # subject ids retired because consent was withdrawn, this run and earlier ones


def _plan(cfg: DictConfig, root: str, private: Path) -> _Plan:
    """Scan the headers, pass the consent gate, judge and choose the series and give them their pseudonyms; the key
    is saved before any image named by it exists."""
    registry = read_consent(cfg.dataset.consent_csv, cfg.consent.patient_column, cfg.consent.consent_column)
    exclusions = read_exclusions(cfg.dataset.get("exclusions_csv"), cfg.exclusions.subject_column,
                                 cfg.exclusions.note_column)
    cache = (HeaderCache(private, consenting_patients(registry, cfg.consent.accepted)) if cfg.scan.cache
             else None)
    scan = scan_tree(root, workers=int(cfg.workers), files_per_task=int(cfg.scan.files_per_task),
                     follow_symlinks=bool(cfg.scan.follow_symlinks), skip_hidden=bool(cfg.scan.skip_hidden),
                     progress=bool(cfg.progress), cache=cache)
    log.info("header scan: %d files (%d parsed, the others unchanged since the last scan) in %.1f s "
             "(%.0f files/s), %d not usable", scan.n_files, scan.n_parsed, scan.seconds,
             scan.n_files / max(scan.seconds, 1e-9), len(scan.problems))
    write_table(scan.problems, private / PROBLEMS_FILE)
    grouped = group_series(scan.files, float(cfg.rules.geometry.orientation_tolerance))
    consenting = consent_given(grouped.series["patient_id"], registry, cfg.consent.accepted)
    store = PseudonymStore(private)
    _forget_without_consent(grouped.series[~consenting], store)
    n_without_consent = int((~consenting).sum())
    if cache is not None:  # the cache's series without consent, unless this scan parsed some of their files
        stopped_now = {cache.keyed(k) for k in grouped.series.loc[~consenting, "series_key"]}
        n_without_consent += len(set(scan.withheld.series_hash) - stopped_now)
    series = describe(grouped.series[consenting].reset_index(drop=True), Vocabulary(cfg.vocabulary))
    series = apply_rules(series, cfg.rules)

    curated_before = store.subject_ids()
    series = select_series(series, cfg.selection, set(curated_before))
    series = _assign_people(series, store, float(cfg.pseudonymise.max_age))
    included = series[series["decision"] == INCLUDED].sort_values(["patient", "exam", "series_number", "series_key"])
    store.add_subjects(included)
    store.save()  # the key exists before any image named by it
    subject_ids = store.subject_ids()
    series["subject_id"] = series["series_key"].map(subject_ids).where(series["decision"] == INCLUDED, "")

    excluded_by_annotators = series["subject_id"].isin(exclusions) & (series["subject_id"] != "")
    _exclude(series, excluded_by_annotators, cfg.exclusions.reason,
             [f"excluded by the annotators: {exclusions[s]}".rstrip(": ") for s in
              series.loc[excluded_by_annotators, "subject_id"]])
    return _Plan(scan, grouped.files, series, subject_ids, n_without_consent, cache,
                 grouped.series.loc[~consenting, ["series_key", "patient_id"]], store.retired_subjects())


def _curate(cfg: DictConfig, shard: Shard) -> CurationSummary:
    curated, private, reports = Path(cfg.paths.curated), Path(cfg.paths.private), Path(cfg.paths.reports)
    images, provenance = curated / "images", curated / "provenance"
    for folder in (private, reports):  # curated/ is cleaned by its lock
        remove_stale_temporaries(folder)
    root = str(Path(cfg.dataset.dicom_root).resolve())
    with stage_lock(curated, PLAN_LOCK, wait=True):
        plan = _plan(cfg, root, private)
        if plan.cache is not None and not shard.whole:  # the next job of the sweep parses nothing again
            plan.cache.save(plan.scan.states, plan.scan.files, plan.scan.problems, plan.scan.withheld, plan.stopped)
    scan, series, subject_ids, cache = plan.scan, plan.series, plan.subject_ids, plan.cache

    start = time.perf_counter()
    wanted = series[(series["decision"] == INCLUDED) & series["subject_id"].map(shard.holds)]
    todo = wanted[[not is_current(nifti_path(images, r.subject_id), provenance / f"{r.subject_id}.json",
                                  r.content_hash) for r in wanted.itertuples()]]
    n_converted, failed = _convert(todo, plan.files, root, images, provenance, cfg)
    if not shard.whole:
        return _shard_done(shard, wanted, todo, failed, n_converted, time.perf_counter() - start, plan, curated)
    unreadable = series["series_key"].isin(failed)
    _exclude(series, unreadable, UNREADABLE,
             [f"conversion failed: {failed[k].split(':')[0]} (message in the private {ERRORS_FILE})"
              for k in series.loc[unreadable, "series_key"]])
    write_table(pd.DataFrame({"series_id": series.loc[unreadable, "series_id"],
                              "error": [failed[k] for k in series.loc[unreadable, "series_key"]]}),
                private / ERRORS_FILE)
    convert_seconds = time.perf_counter() - start
    if failed:
        log.warning("%d series could not be converted (reason %r in %s)", len(failed), UNREADABLE, SERIES_TABLE)

    n_removed = _remove_uncurated(images, provenance, set(series.loc[series["decision"] == INCLUDED, "subject_id"]))
    table = series_table(series, subject_ids)
    subjects = table.loc[table["decision"] == INCLUDED, SUBJECT_COLUMNS].sort_values("subject_id")
    subjects = subjects.reset_index(drop=True)

    write_table(table, curated / SERIES_TABLE)
    write_table(subjects, curated / SUBJECTS_TABLE)
    withdrawn = plan.withdrawn
    write_table(pd.DataFrame({"subject_id": withdrawn}), curated / WITHDRAWN_TABLE)
    chars = characteristics_table(subjects, list(cfg.characteristics.age_bins),
                                  list(cfg.characteristics.slice_thickness_bins_mm))
    write_table(chars, reports / f"{CHARACTERISTICS}.csv")
    write_text(reports / f"{CHARACTERISTICS}.md", to_markdown(chars))
    reasons = {str(k): int(v) for k, v in table.loc[table["decision"] != INCLUDED, "reason"].value_counts().items()}
    summary = CurationSummary(curated, scan.n_files, len(scan.problems), len(series), len(subjects), n_converted,
                              n_removed, withdrawn, plan.n_without_consent, scan.seconds, convert_seconds, table,
                              subjects, chars, reasons, scan.n_parsed)
    write_text(curated / SUMMARY_FILE, json.dumps({
        "files": scan.n_files, "files_parsed": scan.n_parsed, "problem_files": scan.problems["problem"].value_counts().to_dict(),
        "series": len(series) + plan.n_without_consent, "without_consent": plan.n_without_consent,
        "subjects": len(subjects), "converted_now": n_converted, "removed_now": n_removed,
        "excluded_by_reason": reasons, "scan_seconds": round(scan.seconds, 2),
        "convert_seconds": round(convert_seconds, 2)}, indent=1))
    if cache is not None:  # last: a scan that ends early is parsed again next time, never half-remembered
        cache.save(scan.states, scan.files, scan.problems, scan.withheld, plan.stopped)
    log.info("curation: %d series, %d subjects included, %d converted now, %d removed", len(series), len(subjects),
             n_converted, n_removed)
    return summary


def _shard_done(shard: Shard, wanted: pd.DataFrame, todo: pd.DataFrame, failed: dict[str, str], n_converted: int,
                seconds: float, plan: _Plan, curated: Path) -> CurationSummary:
    """A shard's part (its subjects and what became of them; the messages wait for the merge, which converts a
    failed series again and keeps its error in the private folder) and its summary; no cohort table is written."""
    converted = set(todo["series_key"])
    status = ["failed" if key in failed else "converted" if key in converted else "up to date"
              for key in wanted["series_key"]]
    write_table(pd.DataFrame({"subject_id": wanted["subject_id"], "status": status}).sort_values("subject_id"),
                shard.part(curated, CONVERSIONS_PART, ".csv"))
    series = plan.series
    subjects = series.loc[series["decision"] == INCLUDED, ["subject_id"]]
    return CurationSummary(curated, plan.scan.n_files, len(plan.scan.problems), len(series), len(subjects), n_converted,
                           0, [], plan.n_without_consent, plan.scan.seconds, seconds, pd.DataFrame(), subjects,
                           pd.DataFrame(), {}, plan.scan.n_parsed, shard)
