"""SpaceNet building releases as data: one declarative :class:`SpaceNetVersion` entry each.

An entry says where a release's GeoTIFFs and labels live and how they are named; the loader
(:mod:`.spacenet`), the built-in names (:mod:`.builtin`), the synthetic generator
(:mod:`.synthetic`) and the scorer's grouping read these fields and nothing else, so adding a
release is one new entry plus its tests (guide: ``datasets/README.md``). Torch-free.

Paths are glob patterns relative to an *area root* (one released folder, e.g.
``AOI_2_Vegas_Train``) with the placeholders ``{product}``, ``{area}`` (the area root's folder
name), ``{id}`` (the ImageId) and ``{tile}`` (the ImageId's tile part, SpaceNet 4).

Layouts, as released (learned from torchgeo's SpaceNet datasets, the SpaceNet challenge
repositories and tools that read the AWS archives):

SpaceNet 1, Rio de Janeiro (WorldView-2; area root = the train archives unpacked together)::

    3band/3band_AOI_1_RIO_img{N}.tif          3 bands (R, G, B), ~438x406, 0.5 m, 8-bit
    8band/8band_AOI_1_RIO_img{N}.tif          8 bands, ~110x101 (a quarter of the 3band grid)
    geojson/Geo_AOI_1_RIO_img{N}.geojson      footprints, lon/lat
    (older archive: vectordata/geojson/... and
     vectordata/summarydata/AOI_1_RIO_polygons_solution_{3band,8band}.csv, pixels of that product)

SpaceNet 2, Las Vegas / Paris / Shanghai / Khartoum (WorldView-3), per city ``AOI_2_Vegas_Train``::

    RGB-PanSharpen/RGB-PanSharpen_AOI_2_Vegas_img{N}.tif   3 bands, 650x650, 0.3 m, 11-bit
    MUL-PanSharpen/MUL-PanSharpen_AOI_2_Vegas_img{N}.tif   8 bands, 650x650
    PAN/PAN_AOI_2_Vegas_img{N}.tif                         1 band, 650x650
    MUL/MUL_AOI_2_Vegas_img{N}.tif                         8 bands, 163x163 (1.24 m)
    geojson/buildings/buildings_AOI_2_Vegas_img{N}.geojson footprints, lon/lat
    summaryData/AOI_2_Vegas_Train_Building_Solutions.csv   pixels of the 650x650 grid

SpaceNet 4, Atlanta off-nadir (WorldView-2, 27 collects from 7 to 54 degrees off nadir; area root
= the collect archives and ``geojson.tar.gz`` unpacked together)::

    Atlanta_nadir{A}_catid_{CATID}/Pan-Sharpen/Pan-Sharpen_Atlanta_nadir{A}_catid_{CATID}_{x}_{y}.tif
                                                4 bands (B, G, R, NIR), 900x900, ~0.5 m, 11-bit
    Atlanta_nadir{A}_catid_{CATID}/PAN/PAN_...  1 band, 900x900
    Atlanta_nadir{A}_catid_{CATID}/MS/MS_...    4 bands, 225x225
    geojson/spacenet-buildings/spacenet-buildings_{x}_{y}.geojson   one label file per tile,
                                                shared by the 27 views of that tile
    (optional) summaryData/*.csv                pixels of the 900x900 grid

``{x}_{y}`` is the tile's UTM origin; every collect covers the same tiles, so SpaceNet 4's split is
by tile (all views of a tile in one split), never by ImageId.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Product:
    """One image product: folder and file prefix ``name``, ``bands`` per file, nominal ``size``
    (width, height) in pixels (``None`` when chips vary), ground sample distance ``gsd_m``,
    ``band_names`` in STAC ``eo:bands`` common names (WorldView-3's NIR1 / NIR2 are ``nir08`` /
    ``nir09``), which a training run records as INPUT.BAND_NAMES."""

    name: str
    bands: int
    size: tuple[int, int] | None
    gsd_m: float
    note: str = ""
    band_names: tuple[str, ...] = ()  # STAC eo common names, file order (() = not named)


# WorldView-2/3 multispectral bands in file order, as STAC eo common names.
WORLDVIEW_8 = ("coastal", "blue", "green", "yellow", "red", "rededge", "nir08", "nir09")


@dataclass(frozen=True)
class Area:
    """One released folder: ``short`` name used in built-in names, ``folder`` under
    ``$DETECTRON2_DATASETS/spacenet``, ``aoi`` as the ImageIds spell it."""

    short: str
    folder: str
    aoi: str


@dataclass(frozen=True)
class SpaceNetVersion:
    """A SpaceNet building release (see the module docstring for the placeholders).

    ``images``: where a product's files are (glob). ``image_id``: regex found at the end of a
    file's stem; group ``id`` is the ImageId, ``tile`` (if any) the place shared by several
    views. ``csv_labels``: globs tried in order, every file of the first that matches is read;
    ``csv_grid``: the product whose pixel grid the CSV coordinates refer to (``None``: the
    product read). ``geojson_labels``: candidates for one image's GeoJSON, first existing wins.
    ``labels``: the default source. ``group_by``: how the scorer groups images
    (:mod:`mnc_d2.evaluation.rules`); the headline number is the mean of the group F1s.
    ``split_on``: the ImageId group hashed for the train/val split. ``subsets``: built-in name
    part -> scoring groups kept (``None``: all). ``variants``: built-in name suffix -> product.
    ``union_name``: name part of a built-in that joins every area (``None``: not registered).
    """

    name: str
    title: str
    products: tuple[Product, ...]
    default_product: str
    images: str
    image_id: re.Pattern
    csv_labels: tuple[str, ...]
    csv_grid: str | None
    geojson_labels: tuple[str, ...]
    labels: str
    group_by: str
    headline: str
    areas: tuple[Area, ...]
    split_on: str = "id"
    subsets: dict[str, tuple[str, ...] | None] = field(default_factory=lambda: {"": None})
    variants: dict[str, str] = field(default_factory=dict)
    union_name: str | None = None

    # --- lookups --------------------------------------------------------------------------

    def product(self, name: str | None) -> Product:
        """The product called ``name`` (``None``: the default); an error listing them if none."""
        name = name or self.default_product
        for product in self.products:
            if product.name == name:
                return product
        raise ValueError(f"product={name!r} is not a {self.title} product; expected one of "
                         f"{[p.name for p in self.products]}")

    def area(self, short: str) -> Area:
        for area in self.areas:
            if area.short == short:
                return area
        raise ValueError(f"{self.title} has no area {short!r}; expected one of "
                         f"{[a.short for a in self.areas]}")

    def match_id(self, path: str | Path) -> re.Match | None:
        return self.image_id.search(Path(path).stem)

    def image_id_from_path(self, path: str | Path) -> str:
        """``.../RGB-PanSharpen_AOI_2_Vegas_img12.tif`` -> ``AOI_2_Vegas_img12``."""
        match = self.match_id(path)
        if not match:
            raise ValueError(f"{path}: file name does not end in a {self.title} ImageId "
                             f"(pattern {self.image_id.pattern}); expected "
                             f"<product>_<ImageId>.tif as released")
        return match.group("id")

    def split_key(self, image_id: str) -> str:
        """The part of ``image_id`` that decides its split (the tile for SpaceNet 4)."""
        if self.split_on == "id":
            return image_id
        match = self.image_id.search(image_id)
        if not match:
            raise ValueError(f"ImageId {image_id!r} does not match {self.title}'s pattern "
                             f"{self.image_id.pattern}")
        return match.group(self.split_on)

    def split_of(self, image_id: str) -> str:
        """``val`` when crc32(split key) % 5 == 0 (about 20%), else ``train``."""
        return split_of_key(self.split_key(image_id))

    def metadata(self, product: str | None = None) -> dict:
        """The Detectron2 metadata every registration of this release's ``product`` carries:
        what the evaluator needs (evaluator_type, version, group_by, headline) and the input."""
        prod = self.product(product)
        return {"thing_classes": ["building"], "evaluator_type": "spacenet", "version": self.name,
                "group_by": self.group_by, "headline": self.headline, "product": prod.name,
                "num_bands": prod.bands, "gsd_m": prod.gsd_m,
                "band_names": list(prod.band_names),
                **({"tile_px": max(prod.size)} if prod.size else {})}

    def in_subset(self, subset: str, image_id: str) -> bool:
        """Whether ``image_id`` belongs to built-in subset ``subset`` (its scoring group)."""
        kept = self.subsets[subset]
        if kept is None:
            return True
        if self.group_by != "nadir":
            raise ValueError(f"{self.title} subsets need a nadir grouping, not {self.group_by!r}")
        return nadir_bin(image_id) in kept

    # --- files ------------------------------------------------------------------------------

    def _fill(self, pattern: str, root: Path, product: str = "", image_id: str = "") -> str:
        tile = ""
        if image_id:
            match = self.image_id.search(image_id)
            tile = (match.groupdict().get("tile") or "") if match else ""
        return pattern.format(product=product, area=root.name, id=image_id, tile=tile)

    def image_glob(self, root: Path, product: str | None = None) -> str:
        return self._fill(self.images, Path(root), self.product(product).name)

    def find_images(self, root: str | Path, product: str | None = None) -> list[Path]:
        root = Path(root)
        return sorted(root.glob(self.image_glob(root, product)))

    def csv_patterns(self, root: str | Path, product: str | None = None) -> list[str]:
        """``csv_labels`` filled in for ``root`` and ``product`` (globs relative to ``root``)."""
        root = Path(root)
        return [self._fill(p, root, self.product(product).name) for p in self.csv_labels]

    def csv_label_files(self, root: str | Path, product: str | None = None) -> list[Path]:
        """Every summary CSV of the first ``csv_labels`` pattern that matches (may be empty)."""
        root = Path(root)
        for pattern in self.csv_patterns(root, product):
            found = sorted(root.glob(pattern))
            if found:
                return found
        return []

    def geojson_candidates(self, root: str | Path, image_id: str) -> list[Path]:
        root = Path(root)
        return [root / self._fill(p, root, image_id=image_id) for p in self.geojson_labels]

    def geojson_label_file(self, root: str | Path, image_id: str) -> Path:
        """The first existing candidate (else the first candidate, for the error message)."""
        candidates = self.geojson_candidates(root, image_id)
        return next((p for p in candidates if p.is_file()), candidates[0])

    def csv_scale(self, product: str | None, width: int, height: int) -> tuple[float, float]:
        """Factors taking the CSV's pixel coordinates onto a ``width`` x ``height`` raster of
        ``product`` (1, 1 when the CSV is on that product's own grid)."""
        product = self.product(product).name
        if self.csv_grid is None or self.csv_grid == product:
            return 1.0, 1.0
        grid = self.product(self.csv_grid).size
        return width / grid[0], height / grid[1]


# --- SpaceNet 4's scoring segments ----------------------------------------------------------

_NADIR = re.compile(r"nadir(\d+)_catid")
# (segment, largest angle in it): <= 25 deg Nadir, 26-40 Off-Nadir, > 40 Very-Off-Nadir.
NADIR_BINS = (("Nadir", 25), ("Off-Nadir", 40), ("Very-Off-Nadir", 90))


def nadir_angle(image_id: str) -> int | None:
    """The collect's off-nadir angle named in a SpaceNet 4 ImageId (``..._nadir27_catid_...``
    -> 27), ``None`` if it names none."""
    match = _NADIR.search(str(image_id))
    return int(match.group(1)) if match else None


def nadir_bin(image_id: str) -> str:
    """SpaceNet 4's segment of an ImageId (``Atlanta_nadir27_catid_..._x_y`` -> ``Off-Nadir``)."""
    angle = nadir_angle(image_id)
    if angle is None:
        raise ValueError(f"ImageId {image_id!r} names no off-nadir angle ('..._nadir27_catid_...'); "
                         "group by city or none instead")
    return next(name for name, top in NADIR_BINS if angle <= top)


def split_of_key(key: str) -> str:
    return "val" if zlib.crc32(key.encode("utf-8")) % 5 == 0 else "train"


SPACENET1 = SpaceNetVersion(
    name="spacenet1",
    title="SpaceNet 1",
    products=(
        Product("3band", 3, None, 0.5, "R, G, B; 8-bit; ~438x406", ("red", "green", "blue")),
        Product("8band", 8, None, 2.0, "WorldView-2 multispectral; ~110x101", WORLDVIEW_8),
    ),
    default_product="3band",
    images="{product}/*.tif",
    image_id=re.compile(r"(?P<id>AOI_\d+_[A-Za-z]+_img\d+)$"),
    csv_labels=("vectordata/summarydata/AOI_1_RIO_polygons_solution_{product}.csv",
                "summarydata/AOI_1_RIO_polygons_solution_{product}.csv"),
    csv_grid=None,
    geojson_labels=("geojson/Geo_{id}.geojson", "vectordata/geojson/Geo_{id}.geojson"),
    labels="geojson",
    group_by="city",
    headline="F1 over Rio (one area, so the mean city F1 is the F1)",
    areas=(Area("rio", "SN1_buildings_train_AOI_1_Rio", "AOI_1_RIO"),),
    variants={"": "3band", "_8band": "8band"},
)

SPACENET2 = SpaceNetVersion(
    name="spacenet2",
    title="SpaceNet 2",
    products=(
        Product("RGB-PanSharpen", 3, (650, 650), 0.3, "R, G, B; 11-bit in uint16",
                ("red", "green", "blue")),
        Product("MUL-PanSharpen", 8, (650, 650), 0.3,
                "coastal, blue, green, yellow, red, red edge, NIR1, NIR2", WORLDVIEW_8),
        Product("PAN", 1, (650, 650), 0.3, "", ("pan",)),
        Product("MUL", 8, (163, 163), 1.24, "", WORLDVIEW_8),
    ),
    default_product="RGB-PanSharpen",
    images="{product}/*.tif",
    image_id=re.compile(r"(?P<id>AOI_\d+_[A-Za-z]+_img\d+)$"),
    csv_labels=("summaryData/{area}_Building_Solutions.csv",),
    csv_grid="RGB-PanSharpen",
    geojson_labels=("geojson/buildings/buildings_{id}.geojson",),
    labels="csv",
    group_by="city",
    headline="mean of the city F1s",
    areas=(Area("vegas", "AOI_2_Vegas_Train", "AOI_2_Vegas"),
           Area("paris", "AOI_3_Paris_Train", "AOI_3_Paris"),
           Area("shanghai", "AOI_4_Shanghai_Train", "AOI_4_Shanghai"),
           Area("khartoum", "AOI_5_Khartoum_Train", "AOI_5_Khartoum")),
    variants={"": "RGB-PanSharpen", "_8band": "MUL-PanSharpen"},
    union_name="all",
)

SPACENET4 = SpaceNetVersion(
    name="spacenet4",
    title="SpaceNet 4",
    products=(
        Product("Pan-Sharpen", 4, (900, 900), 0.5, "B, G, R, NIR; 11-bit in uint16",
                ("blue", "green", "red", "nir")),
        Product("PAN", 1, (900, 900), 0.5, "", ("pan",)),
        Product("MS", 4, (225, 225), 2.0, "B, G, R, NIR", ("blue", "green", "red", "nir")),
    ),
    default_product="Pan-Sharpen",
    images="Atlanta_nadir*_catid_*/{product}/*.tif",
    image_id=re.compile(r"(?P<id>(?P<collect>Atlanta_nadir(?P<nadir>\d+)_catid_[0-9A-Za-z]+)_"
                        r"(?P<tile>\d+_\d+))$"),
    csv_labels=("summaryData/*.csv",),
    csv_grid="Pan-Sharpen",
    geojson_labels=("geojson/spacenet-buildings/spacenet-buildings_{tile}.geojson",),
    labels="geojson",
    group_by="nadir",
    headline="mean of the Nadir (<= 25 deg), Off-Nadir (26-40) and Very-Off-Nadir (> 40) F1s",
    areas=(Area("atlanta", "SN4_buildings_train_AOI_6_Atlanta", "Atlanta"),),
    split_on="tile",
    subsets={"nadir": ("Nadir",), "offnadir": ("Off-Nadir",),
             "veryoffnadir": ("Very-Off-Nadir",), "all": None},
    variants={"": "Pan-Sharpen"},
)

VERSIONS = {v.name: v for v in (SPACENET1, SPACENET2, SPACENET4)}


def get_version(name: str) -> SpaceNetVersion:
    try:
        return VERSIONS[name]
    except KeyError:
        raise ValueError(f"version={name!r} is not one of {sorted(VERSIONS)}") from None


def image_id_of(path: str | Path) -> str | None:
    """The ImageId at the end of a file name in any release's pattern, else ``None``."""
    for version in VERSIONS.values():
        match = version.match_id(path)
        if match:
            return match.group("id")
    return None


def infer_version(root: str | Path, product: str | None = None) -> SpaceNetVersion:
    """The one release whose image layout ``root`` holds (with ``product`` if given).

    Raises ``FileNotFoundError`` when none matches (listing what each release expects) and
    ``ValueError`` when several do (pass ``version=``).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"SpaceNet folder {root} does not exist (see datasets/README.md "
                                "for each release's layout)")
    found, expected = [], []
    for version in VERSIONS.values():
        names = [p.name for p in version.products]
        if product is not None and product not in names:
            continue
        for name in [product] if product else names:
            pattern = version.image_glob(root, name)
            expected.append(f"{version.name}: {root}/{pattern}")
            if next(root.glob(pattern), None) is not None:
                found.append(version)
                break
    if len(found) == 1:
        return found[0]
    if not found:
        what = f"product {product!r}" if product else "any product"
        raise FileNotFoundError(
            f"{root} holds no SpaceNet images of {what} in a known layout; looked for "
            + "; ".join(expected) + " (see datasets/README.md, or pass version=)")
    raise ValueError(f"{root} matches several SpaceNet layouts ({[v.name for v in found]}); "
                     "pass version= to say which")
