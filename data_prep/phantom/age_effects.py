"""Age effects planted in the phantom, so that the aging study has effects to find (README "Phantom").

Each effect is linear in the years above (or below) ``reference_age``: the aorta widens, the spleen
shrinks and the autochthonous back muscles lose attenuation. Cancellous bone loses density with age
as it always did (``ct.tissue_lut``); every other structure has no age effect at all. The effects
are applied after the anatomy is drawn, so they use no random numbers: the rest of a cohort stays
exactly what it was without them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from data_prep.phantom.shapes import Ellipsoid, Tube
from totalseg_train import classes

AORTA, SPLEEN = "aorta", "spleen"
AUTOCHTHON = ("autochthon_left", "autochthon_right")


@dataclass(frozen=True)
class AgeEffects:
    reference_age: float = 50.0
    aorta_radius_per_year: float = 0.0    # relative change of the aorta's radius per year
    spleen_radii_per_year: float = 0.0    # relative change of each of the spleen's radii per year
    autochthon_hu_per_year: float = 0.0   # HU per year

    @classmethod
    def from_config(cls, cfg) -> "AgeEffects":
        """The ``age_effects`` block of the phantom config; none when the block is absent."""
        block = cfg.get("age_effects") if hasattr(cfg, "get") else None
        return cls() if block is None else cls(**{k: float(v) for k, v in dict(block).items()})

    def _scale(self, per_year: float, age: float) -> float:
        # Never below a tenth: a phantom structure must keep a size at any age and setting.
        return max(0.1, 1.0 + per_year * (age - self.reference_age))

    def apply(self, items: list[tuple[str, object]], age: float) -> list[tuple[str, object]]:
        """The structures of ``anatomy.structures`` with the planted size effects for ``age``."""
        out = []
        for name, shape in items:
            if name == AORTA and isinstance(shape, Tube):
                shape = replace(shape, radius=shape.radius * self._scale(self.aorta_radius_per_year, age))
            elif name == SPLEEN and isinstance(shape, Ellipsoid):
                shape = replace(shape, radii=np.asarray(shape.radii) * self._scale(self.spleen_radii_per_year, age))
            out.append((name, shape))
        return out

    def hu_offsets(self, age: float) -> dict[str, float]:
        """HU added to a class's tissue value at ``age``."""
        offset = self.autochthon_hu_per_year * (age - self.reference_age)
        return {name: offset for name in AUTOCHTHON} if offset else {}

    def planted(self) -> list[tuple[str, str, int]]:
        """(class name, measure, sign of the correlation with age) of every effect the phantom plants,
        including cancellous bone's loss of density (every bone class's mean HU falls)."""
        effects = [(c.name, "mean_hu", -1) for c in classes.all_classes() if c.category == "bone"]
        if self.aorta_radius_per_year:
            effects.append((AORTA, "volume_ml", int(np.sign(self.aorta_radius_per_year))))
        if self.spleen_radii_per_year:
            effects.append((SPLEEN, "volume_ml", int(np.sign(self.spleen_radii_per_year))))
        if self.autochthon_hu_per_year:
            effects += [(name, "mean_hu", int(np.sign(self.autochthon_hu_per_year))) for name in AUTOCHTHON]
        return effects
