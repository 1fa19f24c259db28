"""Class groups of a QA sheet (bones, organs and vessels, ...), defined in config over the class table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from totalseg_train import classes


@dataclass(frozen=True)
class ClassGroup:
    name: str
    class_ids: tuple[int, ...]


def select_classes(spec: Mapping) -> tuple[int, ...]:
    """Class ids chosen by ``categories``, ``parts`` and ``names``, minus ``exclude_parts`` / ``exclude_names``."""
    known = {"name", "categories", "parts", "names", "exclude_parts", "exclude_names"}
    unknown = set(spec) - known
    if unknown:
        raise KeyError(f"class group {spec.get('name')!r}: unknown keys {sorted(unknown)}; use {sorted(known)}")
    chosen: set[int] = set()
    for category in spec.get("categories") or []:
        chosen |= {c.id for c in classes.in_category(category)}
    for part in spec.get("parts") or []:
        chosen |= {c.id for c in classes.in_part(part)}
    for name in spec.get("names") or []:
        chosen.add(classes.id_of(name))
    for part in spec.get("exclude_parts") or []:
        chosen -= {c.id for c in classes.in_part(part)}
    for name in spec.get("exclude_names") or []:
        chosen.discard(classes.id_of(name))
    return tuple(sorted(chosen))


def groups_from_config(specs: Iterable[Mapping]) -> list[ClassGroup]:
    groups = [ClassGroup(str(spec["name"]), select_classes(spec)) for spec in specs]
    if not groups:
        raise ValueError("render.groups is empty: define at least one class group")
    for group in groups:
        if not group.class_ids:
            raise ValueError(f"class group {group.name!r} selects no class")
    return groups


def ungrouped(groups: list[ClassGroup]) -> list[str]:
    """Names of classes that no group shows (a config check; such classes never appear on a sheet)."""
    shown = {i for g in groups for i in g.class_ids}
    return [c.name for c in classes.all_classes() if c.id not in shown]
