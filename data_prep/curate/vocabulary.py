"""Reading meaning from free-text headers: kernel class, contrast phase and body region.

Every word list comes from the config (``vocabulary``); descriptions are matched in English and
German after normalisation (lower case, umlauts spelled out, punctuation removed).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

PHASES = ("native", "arterial", "portal_venous", "late")
_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})
_NOT_WORD = re.compile(r"[^a-z0-9+]+")


def normalise(text: str) -> str:
    """'CT Thorax portalvenös 3.0 B30f' -> 'ct thorax portalvenoes 3 0 b30f'."""
    text = str(text or "").lower().translate(_UMLAUTS)
    # Any other accent (é, à) falls back to its base letter.
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return _NOT_WORD.sub(" ", text).strip()


def _compile(patterns) -> list[re.Pattern]:
    return [re.compile(p) for p in patterns]


@dataclass(frozen=True)
class SeriesGeometry:
    """What the headers say about where a series was scanned (for the body-region fallback)."""

    fov_mm: float            # largest in-plane extent of the reconstructed field of view
    z_extent_mm: float       # scanned length along the slice normal
    lateral_offset_mm: float  # distance of the field-of-view centre from the table centre (patient x = 0)


class Vocabulary:
    """Compiled word lists of ``cfg.vocabulary``."""

    def __init__(self, cfg):
        self.kernels = {name: _compile(p) for name, p in cfg.kernels.items()}
        self.phases = {name: _compile(p) for name, p in cfg.phases.items()}
        self.no_agent = {normalise(v) for v in cfg.no_agent}
        self.body_part = {value.upper(): region for region, values in cfg.body_part.items() for value in values}
        self.regions = {name: _compile(p) for name, p in cfg.regions.items()}
        self.geometry = cfg.geometry

    def kernel_class(self, kernel: str) -> str:
        """soft | bone | unknown from a ConvolutionKernel value."""
        text = str(kernel or "").strip().lower()
        for name, patterns in self.kernels.items():
            if any(p.search(text) for p in patterns):
                return name
        return "unknown"

    def _phase_in(self, text: str) -> str | None:
        """A named phase, 'contrast' (contrast without a phase) or None."""
        text = normalise(text)
        if not text:
            return None
        for name in ("native", *PHASES[1:], "contrast"):
            if any(p.search(text) for p in self.phases.get(name, ())):
                return name
        return None

    def contrast_phase(self, series_description: str, agent: str, study_description: str,
                       protocol: str) -> tuple[str, str]:
        """(phase, contrast): phase in native|arterial|portal_venous|late|unknown, contrast in yes|no|unknown.

        The series description speaks for the series; the study description and protocol speak for
        the whole exam (which may also hold a native series), so they only name the phase of a
        series already known to carry contrast or say nothing else.
        """
        from_series = self._phase_in(series_description)
        if from_series == "native":
            return "native", "no"
        if from_series in PHASES:
            return from_series, "yes"
        has_agent = normalise(agent) not in self.no_agent
        from_study = self._phase_in(study_description) or self._phase_in(protocol)
        if from_series == "contrast" or has_agent:
            return (from_study if from_study in PHASES[1:] else "unknown"), "yes"
        if from_study == "native":
            return "native", "no"
        if from_study in PHASES:
            return from_study, "yes"
        if from_study == "contrast":
            return "unknown", "yes"
        return "unknown", "unknown"

    def region_from_body_part(self, body_part: str) -> str | None:
        return self.body_part.get(str(body_part or "").strip().upper().replace(" ", "_"))

    def region_from_text(self, *texts: str) -> str | None:
        found = {name for name, patterns in self.regions.items()
                 for text in texts if text for p in patterns if p.search(normalise(text))}
        return combine_regions(found)

    def region_from_geometry(self, geometry: SeriesGeometry) -> str | None:
        """Extremity scans by their shape: hands (small field, off the midline), legs (long and narrow)."""
        hands, legs = self.geometry.hands, self.geometry.legs
        if (geometry.fov_mm <= hands.max_fov_mm and geometry.z_extent_mm <= hands.max_z_extent_mm
                and geometry.lateral_offset_mm >= hands.min_lateral_offset_mm):
            return "hands"
        if (geometry.fov_mm <= legs.max_fov_mm and geometry.z_extent_mm >= legs.min_z_extent_mm
                and geometry.lateral_offset_mm <= legs.max_lateral_offset_mm):
            return "legs"
        return None

    def body_region(self, body_part: str, texts: tuple[str, ...], geometry: SeriesGeometry) -> tuple[str, str]:
        """(region, source): from BodyPartExamined, else the descriptions, else the scan geometry."""
        region = self.region_from_body_part(body_part)
        if region:
            return region, "body_part"
        region = self.region_from_text(*texts)
        if region:
            return region, "description"
        region = self.region_from_geometry(geometry)
        if region:
            return region, "geometry"
        return "unknown", "none"


def combine_regions(found: set[str]) -> str | None:
    """One region name for the set of regions a description names ('thorax' + 'abdomen' -> 'thorax_abdomen')."""
    if not found:
        return None
    if "whole_body" in found:
        return "whole_body"
    if {"thorax", "abdomen"} <= found:
        found = (found - {"thorax", "abdomen"}) | {"thorax_abdomen"}
    return "+".join(sorted(found))
