"""A parametric whole-body anatomy with all 104 classes, in patient coordinates (LPS, mm).

The standard body is 1750 mm tall, soles at z = 0; x grows towards the patient's left and
y towards the back, as in DICOM. A subject's body scales the standard one (height, habitus)
and jitters organ size and position. ``structures`` lists (class name, shape) in painting
order: later structures overwrite earlier ones where they overlap, so bones come last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_prep.phantom.shapes import Clip, Cylinder, Ellipsoid, Shell, Tube, Union, rotation

STANDARD_HEIGHT = 1750.0

# z (mm from the soles) of landmarks of the standard body; scan extents are defined on them.
LANDMARKS = {
    "vertex": 1750.0,
    "skull_base": 1545.0,
    "c7": 1405.0,
    "lung_apex": 1410.0,
    "t12": 1100.0,
    "iliac_crest": 1000.0,
    "symphysis": 860.0,
    "hands": 800.0,
    "knee": 480.0,
}

# Torso outline: (z, half width, half depth) of the standard body, interpolated between rows.
_TORSO = np.array(
    [
        [840.0, 165.0, 110.0],
        [900.0, 175.0, 115.0],
        [1000.0, 160.0, 112.0],
        [1100.0, 160.0, 115.0],
        [1250.0, 170.0, 120.0],
        [1400.0, 180.0, 118.0],
        [1440.0, 150.0, 100.0],
    ]
)


@dataclass(frozen=True)
class Body:
    """What varies between subjects' bodies."""

    height_scale: float = 1.0
    width_scale: float = 1.0
    fat_fraction: float = 0.12  # subcutaneous fat as a fraction of the torso half-width
    sex: str = "M"

    def scale(self) -> np.ndarray:
        return np.array([self.width_scale, self.width_scale, self.height_scale])

    def to_patient(self, point) -> np.ndarray:
        return np.asarray(point, float) * self.scale()


class BodyOutline:
    """The skin surface: head, neck, torso, arms and legs (not a class; it carries fat and soft tissue)."""

    def __init__(self, body: Body, inner: bool = False):
        self.body = body
        # The inner outline (below the subcutaneous fat) is the outline shrunk by the fat layer.
        self.shrink = 1.0 - body.fat_fraction if inner else 1.0

    def bounds(self):
        s = self.body.scale()
        return np.array([-300.0, -200.0, 0.0]) * s, np.array([300.0, 200.0, STANDARD_HEIGHT]) * s

    def contains(self, x, y, z):
        ws, hs, k = self.body.width_scale, self.body.height_scale, self.shrink
        zs = z / hs  # standard-body z
        xs, ys = x / ws, y / ws
        half_w = np.interp(zs, _TORSO[:, 0], _TORSO[:, 1]) * k
        half_d = np.interp(zs, _TORSO[:, 0], _TORSO[:, 2]) * k
        torso = ((xs / half_w) ** 2 + (ys / half_d) ** 2 <= 1.0) & (zs >= 840.0) & (zs <= 1440.0)
        neck = (xs**2 + (ys - 10.0) ** 2 <= (62.0 * k) ** 2) & (zs > 1400.0) & (zs <= 1560.0)
        head = (xs / (78.0 * k)) ** 2 + (ys / (98.0 * k)) ** 2 + ((zs - 1635.0) / (115.0 * k)) ** 2 <= 1.0
        leg_r = np.interp(zs, [0.0, 80.0, 480.0, 860.0], [45.0, 55.0, 65.0, 88.0]) * k
        legs = ((np.abs(xs) - 92.0) ** 2 + ys**2 <= leg_r**2) & (zs <= 880.0)
        arm_r = np.interp(zs, [730.0, 860.0, 1100.0, 1420.0], [35.0, 38.0, 42.0, 50.0]) * k
        arms = ((np.abs(xs) - 228.0) ** 2 + (ys - 15.0) ** 2 <= arm_r**2) & (zs >= 730.0) & (zs <= 1430.0)
        return torso | neck | head | legs | arms


def vertebra_levels() -> list[tuple[str, float, float]]:
    """(name, z centre, height) of C1..L5 in the standard body, head first."""
    levels = []
    top = LANDMARKS["skull_base"] - 10.0
    for group, count, height, gap in (("C", 7, 16.0, 4.0), ("T", 12, 21.0, 4.0), ("L", 5, 27.0, 5.0)):
        for i in range(1, count + 1):
            levels.append((f"vertebrae_{group}{i}", top - height / 2, height))
            top -= height + gap
    return levels


class _Builder:
    """Collects structures, mapping the standard body to the subject's with jitter."""

    def __init__(self, body: Body, rng: np.random.Generator, jitter_mm: float, size_jitter: float):
        self.body, self.rng = body, rng
        self.jitter_mm, self.size_jitter = jitter_mm, size_jitter
        self.items: list[tuple[str, object]] = []

    def pos(self, point, jitter: bool = True) -> np.ndarray:
        p = self.body.to_patient(point)
        return p + (self.rng.normal(0.0, self.jitter_mm, 3) if jitter else 0.0)

    def size(self, radii, jitter: bool = True) -> np.ndarray:
        r = np.asarray(radii, float) * self.body.scale()[: len(radii)]
        return r * (self.rng.normal(1.0, self.size_jitter) if jitter else 1.0)

    def add(self, name: str, shape) -> None:
        self.items.append((name, shape))

    def ellipsoid(self, center, radii, rot=None, jitter: bool = True) -> Ellipsoid:
        return Ellipsoid(self.pos(center, jitter), self.size(radii, jitter), np.eye(3) if rot is None else rot)

    def tube(self, points, radius, jitter: bool = True) -> Tube:
        shift = self.rng.normal(0.0, self.jitter_mm, 3) if jitter else np.zeros(3)
        pts = np.array([self.body.to_patient(p) for p in points]) + shift
        return Tube(pts, radius * self.body.width_scale)


def structures(body: Body, rng: np.random.Generator, jitter_mm: float = 4.0, size_jitter: float = 0.06):
    """All 104 structures of one subject as (class name, shape), in painting order."""
    b = _Builder(body, rng, jitter_mm, size_jitter)
    _soft_organs(b)
    _lungs_and_airways(b)
    _heart_and_vessels(b)
    # The iliac vessels are drawn where the random stream always drew them, so that every other structure
    # keeps its jitter, and painted after the muscles (see _pelvic_vessels).
    pelvic_vessels = _pelvic_vessels(b)
    _muscles(b)
    b.items += pelvic_vessels
    _bones(b)
    return b.items


def _soft_organs(b: _Builder) -> None:
    b.add("brain", b.ellipsoid([0, 5, 1655], [64, 80, 58]))
    b.add("face", b.ellipsoid([0, -72, 1580], [52, 24, 48]))
    b.add("small_bowel", b.ellipsoid([0, -40, 1010], [95, 45, 62]))
    b.add(
        "colon",
        b.tube(
            [[-90, -20, 950], [-98, 0, 1060], [-80, -48, 1060], [0, -72, 1045], [92, -25, 1075], [102, 10, 1000],
             [45, -15, 925], [0, 40, 885]],
            17,
        ),
    )
    b.add("liver", b.ellipsoid([-62, -5, 1160], [98, 85, 72], rotation(rz_deg=-10, ry_deg=15)))
    b.add("stomach", b.ellipsoid([58, -28, 1150], [46, 34, 56], rotation(ry_deg=-25)))
    b.add("spleen", b.ellipsoid([98, 48, 1158], [28, 42, 52], rotation(rz_deg=35)))
    b.add("gallbladder", b.ellipsoid([-58, -62, 1090], [16, 18, 28], rotation(rx_deg=20)))
    b.add("pancreas", b.tube([[-18, -2, 1095], [30, 4, 1102], [78, 32, 1112]], 12))
    b.add("duodenum", b.tube([[-30, -18, 1098], [-48, 4, 1082], [-32, -4, 1058], [12, -6, 1060]], 10))
    b.add("kidney_right", b.ellipsoid([-76, 58, 1048], [27, 26, 56], rotation(ry_deg=10)))
    b.add("kidney_left", b.ellipsoid([76, 58, 1064], [27, 26, 56], rotation(ry_deg=-10)))
    b.add("adrenal_gland_right", b.ellipsoid([-52, 50, 1124], [10, 10, 19]))
    b.add("adrenal_gland_left", b.ellipsoid([54, 46, 1128], [10, 10, 19]))
    b.add("urinary_bladder", b.ellipsoid([0, -42, 902], [42, 30, 30]))


def _lungs_and_airways(b: _Builder) -> None:
    right = b.ellipsoid([-82, 12, 1282], [66, 86, 124])
    left = b.ellipsoid([82, 12, 1276], [60, 86, 118])
    # Oblique fissures run from posterior-superior to anterior-inferior; the horizontal one
    # splits the right upper region into upper and middle lobes.
    def oblique(lung: Ellipsoid, sign: float):
        c = lung.center + np.array([0.0, 0.0, -10.0])
        return c, sign * np.array([0.0, 0.55, 1.0])

    c_r, n_r = oblique(right, 1.0)
    c_l, n_l = oblique(left, 1.0)
    horizontal = (right.center + np.array([0.0, 0.0, 22.0]), np.array([0.0, 0.0, 1.0]))
    b.add("lung_lower_lobe_right", Clip(right, [(c_r, -n_r)]))
    b.add("lung_middle_lobe_right", Clip(right, [(c_r, n_r), (horizontal[0], -horizontal[1])]))
    b.add("lung_upper_lobe_right", Clip(right, [(c_r, n_r), horizontal]))
    b.add("lung_lower_lobe_left", Clip(left, [(c_l, -n_l)]))
    b.add("lung_upper_lobe_left", Clip(left, [(c_l, n_l)]))
    b.add("trachea", b.tube([[0, -8, 1500], [0, 2, 1400], [0, 8, 1320]], 9))
    b.add("esophagus", b.tube([[0, 26, 1500], [4, 32, 1350], [12, 22, 1200], [24, 4, 1125]], 8))


def heart_ellipsoid(items: list[tuple[str, object]]) -> Ellipsoid:
    """The ellipsoid that every heart part of ``structures(...)`` is cut from; its centre is the heart's."""
    return dict(items)["heart_atrium_left"].shape


def _heart_and_vessels(b: _Builder) -> None:
    heart = b.ellipsoid([12, -32, 1232], [62, 52, 56], rotation(rz_deg=-30, ry_deg=-20))
    c = heart.center
    # Atria lie posterior-superior, ventricles anterior-inferior; the septum splits left from right.
    av_normal = np.array([0.0, 0.8, 0.6])
    lr_normal = np.array([1.0, 0.35, 0.0])
    atria, ventricles = (c, av_normal), (c, -av_normal)
    left, right = (c, lr_normal), (c, -lr_normal)
    b.add("heart_atrium_left", Clip(heart, [atria, left]))
    b.add("heart_atrium_right", Clip(heart, [atria, right]))
    b.add("heart_ventricle_left", Clip(heart, [ventricles, left]))
    b.add("heart_ventricle_right", Clip(heart, [ventricles, right]))
    b.add("heart_myocardium", Clip(Shell(heart, 0.78), [(c + np.array([0.0, 0.0, -6.0]), -av_normal)]))
    b.add(
        "pulmonary_artery",
        Union(
            [
                b.tube([[0, -70, 1262], [-2, -48, 1300], [38, -18, 1312], [62, 0, 1300]], 11),
                b.tube([[-2, -48, 1300], [-40, -12, 1310], [-62, 2, 1298]], 10),
            ]
        ),
    )
    b.add(
        "aorta",
        b.tube(
            [[14, -38, 1262], [10, -28, 1340], [0, 2, 1362], [18, 40, 1335], [22, 44, 1200], [16, 22, 1100],
             [8, 14, 990]],
            13,
        ),
    )
    b.add("inferior_vena_cava", b.tube([[-24, 26, 985], [-26, 24, 1120], [-18, 2, 1200]], 11))
    b.add("portal_vein_and_splenic_vein", b.tube([[-42, -12, 1124], [-5, 2, 1098], [62, 26, 1112]], 7))


def _pelvic_vessels(b: _Builder) -> list[tuple[str, object]]:
    """The iliac veins and arteries, to be painted after the iliopsoas they run along: they indent the muscle
    where the two touch instead of being cut in two by it, as no real vessel is."""
    veins = [(f"iliac_vena_{side}", b.tube([[-18, 22, 975], [s * 48, 30, 935], [s * 76, 28, 880]], 8))
             for side, s in (("left", 1), ("right", -1))]
    arteries = [(f"iliac_artery_{side}", b.tube([[6, 10, 985], [s * 52, 18, 940], [s * 74, 4, 885]], 7))
                for side, s in (("left", 1), ("right", -1))]
    return veins + arteries


def _muscles(b: _Builder) -> None:
    for side, s in (("left", 1), ("right", -1)):
        b.add(f"autochthon_{side}", b.tube([[s * 28, 92, 1420], [s * 34, 100, 1100], [s * 34, 96, 940]], 18))
        b.add(f"iliopsoas_{side}", b.tube([[s * 38, 52, 1085], [s * 60, 32, 955], [s * 86, -4, 872], [s * 94, -10, 830]], 15))
        b.add(f"gluteus_maximus_{side}", b.ellipsoid([s * 84, 102, 872], [50, 34, 70]))
        b.add(f"gluteus_medius_{side}", b.ellipsoid([s * 122, 58, 945], [30, 26, 44]))
        b.add(f"gluteus_minimus_{side}", b.ellipsoid([s * 130, 22, 915], [16, 14, 28]))


def _bones(b: _Builder) -> None:
    for name, z, height in vertebra_levels():
        region = name.split("_")[1][0]
        body_y, rx, ry = {"C": (22.0, 10.0, 9.0), "T": (48.0, 15.0, 13.0), "L": (46.0, 21.0, 17.0)}[region]
        center = b.pos([0.0, body_y, z], jitter=False)
        spine_len = {"C": 18.0, "T": 24.0, "L": 26.0}[region]
        bone = Union(
            [
                Cylinder(center, b.size([rx, ry], jitter=False), height / 2 * b.body.height_scale),
                b.ellipsoid([0.0, body_y + ry + spine_len / 2, z], [5, spine_len / 2 + 6, height * 0.4], jitter=False),
                b.ellipsoid([0.0, body_y + ry + 4, z], [rx * 1.7, 5, height * 0.3], jitter=False),
            ]
        )
        b.add(name, bone)
    b.add("sacrum", b.ellipsoid([0, 76, 902], [44, 18, 46], rotation(rx_deg=-25), jitter=False))
    levels = {name: z for name, z, _ in vertebra_levels()}
    for side, s in (("left", 1), ("right", -1)):
        for i in range(1, 13):
            b.add(f"rib_{side}_{i}", _rib(b, s, i, levels[f"vertebrae_T{i}"]))
        b.add(f"hip_{side}", Union([
            b.ellipsoid([s * 108, 38, 962], [44, 14, 50], rotation(rz_deg=s * 35), jitter=False),
            b.ellipsoid([s * 56, -18, 878], [34, 22, 24], jitter=False),
        ]))
        b.add(f"femur_{side}", Union([
            b.ellipsoid([s * 96, 2, 886], [22, 22, 22], jitter=False),
            b.tube([[s * 98, 2, 886], [s * 112, 6, 850], [s * 92, 0, 480]], 14, jitter=False),
        ]))
        b.add(f"humerus_{side}", Union([
            b.ellipsoid([s * 190, 14, 1402], [22, 22, 22], jitter=False),
            b.tube([[s * 194, 14, 1400], [s * 216, 20, 1120]], 12, jitter=False),
        ]))
        b.add(f"scapula_{side}", b.ellipsoid([s * 102, 102, 1330], [50, 9, 74], rotation(rz_deg=-s * 25), jitter=False))
        b.add(f"clavicula_{side}", b.tube([[s * 22, -52, 1428], [s * 100, -42, 1440], [s * 165, -2, 1436]], 7, jitter=False))


def _rib(b: _Builder, s: int, i: int, z_spine: float) -> Tube:
    """Rib i of one side: an arc from the spine round the chest wall, falling as it goes forward."""
    half_w = np.interp(i, [1, 3, 7, 10, 12], [62, 118, 150, 148, 138])
    half_d = np.interp(i, [1, 3, 7, 10, 12], [52, 86, 108, 106, 100])
    reach = np.interp(i, [1, 7, 8, 10, 11, 12], [150, 160, 140, 120, 80, 60])
    drop = np.interp(i, [1, 7, 12], [40, 95, 40])
    theta = np.deg2rad(np.linspace(8, reach, 12))
    points = np.stack(
        [s * half_w * np.sin(theta), 12 + half_d * np.cos(theta), z_spine - drop * theta / np.deg2rad(reach)], axis=1
    )
    return b.tube(points, 5.5, jitter=False)
