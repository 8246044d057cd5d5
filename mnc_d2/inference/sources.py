"""Where scenes come from: local files, remote GeoTIFFs (HTTP(S), S3, GCS), VRT mosaics, STAC.

Torch-free. A scene's ``path`` is what rasterio opens: a local file, an ``https://`` / ``s3://``
/ ``gs://`` URL (read window by window through GDAL's virtual file systems: only the bytes of the
windows read are fetched) or a ``/vsi...`` path. STAC inputs (an item, an item collection such as
a STAC API search saved by pystac-client, a catalog or collection, on disk or over HTTP) expand
into one scene per item: the chosen asset's href, with the item's id, datetime and, where the
item says, view angle, GSD and band names (:class:`SceneInfo`).

Credentials come from the environment as GDAL and boto expect them (``AWS_*``,
``GDAL_HTTP_HEADERS``, ...), never from the command line; URLs are shown everywhere (logs,
manifest, errors) through :func:`redact`, which drops query strings (signed URLs carry their
token there) and user:password parts.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

logger = logging.getLogger(__name__)

# The most a scene is upsampled to INPUT.GSD unless --max-upsample says otherwise: at 4x a 0.3 m
# model reads 1.2 m imagery (SpaceNet's sensors span 0.3-0.5 m), where a small building is still
# a few pixels. Coarser imagery (Sentinel-2's 10 m, Landsat's 30 m) cannot show buildings, and
# resampled to 0.3 m a 512 x 512 px Landsat scene becomes 51,200 x 51,200 px: hours of tiles
# for nothing, so such a scene fails at once with an error that says why (0 = no limit).
MAX_UPSAMPLE = 4.0


def check_max_upsample(factor: float) -> float:
    """``factor`` for --max-upsample (>= 1, or 0 for no limit), else ValueError saying so."""
    if not (factor == 0 or factor >= 1):
        raise ValueError(f"--max-upsample {factor:g}: give a factor >= 1, or 0 for no limit")
    return float(factor)


REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "az://", "/vsi")
_URL = re.compile(r"((?:https?|s3|gs|az)://)([^\s'\"?#]*)(\?[^\s'\"#]*)?")
_USERINFO = re.compile(r"^[^/@]*@")


def without_query(path: str) -> str:
    """``path`` without a URL's query string (what names the file itself)."""
    return str(path).split("?", 1)[0]


def scene_image_id(path: str) -> str:
    """The ImageId of a scene's rows in SpaceNet CSVs: the release pattern's id in its file
    name, else the file name's stem (a URL's without its query)."""
    from ..data.versions import image_id_of

    bare = without_query(path)
    return image_id_of(bare) or Path(bare).stem


def is_remote(path: str) -> bool:
    return str(path).startswith(REMOTE_PREFIXES)


def is_stac(path: str) -> bool:
    """A ``.json`` path or URL (query string aside) is read as STAC."""
    return without_query(path).lower().endswith(".json")


# what :func:`redact` leaves of a URL's query string (a signed URL's token)
REDACTED_QUERY = "?***"
# the remedy named when a URL cannot be read
REMOTE_READ_HINT = ("check the URL, that its server answers and, for object storage, the "
                    "credentials GDAL reads (e.g. AWS_* variables for s3://)")


def redact(text: str) -> str:
    """``text`` with every URL's query string and user:password part replaced by ``***``."""
    def one(match: re.Match) -> str:
        scheme, rest, query = match.group(1), match.group(2), match.group(3)
        rest = _USERINFO.sub("***@", rest)
        return scheme + rest + (REDACTED_QUERY if query else "")

    return _URL.sub(one, str(text))


@dataclass
class SceneInfo:
    """What is known of a scene besides its pixels (all optional; JSON-serialisable).

    ``stac_id``: the STAC item id; ``datetime``: ISO 8601 UTC acquisition time; ``view_angle``:
    off-nadir angle in degrees (STAC ``view:off_nadir``); ``gsd``: metres per pixel the item
    states; ``band_names``: the asset's band names in file order (STAC ``eo:bands`` common names,
    else names).
    """

    stac_id: str | None = None
    datetime: str | None = None
    view_angle: float | None = None
    gsd: float | None = None
    band_names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _read_json(path: str) -> dict:
    if path.startswith(("http://", "https://")):
        with urllib.request.urlopen(path, timeout=60) as response:  # noqa: S310 (user input)
            return json.loads(response.read().decode("utf-8"))
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _utc(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _band_names(asset_dict: dict, item_props: dict) -> list[str]:
    bands = asset_dict.get("eo:bands") or asset_dict.get("bands") or item_props.get("eo:bands") \
        or []
    names = []
    for band in bands:
        if not isinstance(band, dict):
            return []
        name = band.get("common_name") or band.get("eo:common_name") or band.get("name")
        if not name:
            return []
        names.append(str(name))
    return names


def _is_image(asset: dict) -> bool:
    media = str(asset.get("type", "")).lower()
    href = without_query(asset.get("href", "")).lower()
    return "tiff" in media or href.endswith((".tif", ".tiff", ".vrt"))


def choose_asset(item_id: str, assets: dict, asset_key: str | None,
                 band_count: int | None, where: str, min_bands: int | None = None,
                 option: str = "--stac-asset KEY") -> str:
    """The key of the asset to read: ``asset_key`` when given; else the only GeoTIFF asset with
    role ``data`` (or the only GeoTIFF), preferring one whose band list has ``band_count``
    bands, or at least ``min_bands`` (predict.py --scene-bands: the highest band it names). A
    clear error names the item and its asset keys otherwise, and ``option``, what picks one."""
    keys = sorted(assets)
    if asset_key:
        if asset_key not in assets:
            raise ValueError(f"{where}: item {item_id} has no asset {asset_key!r} (its assets: "
                             f"{', '.join(keys)}); pick one with {option}")
        return asset_key
    images = [k for k in keys if _is_image(assets[k])]
    data = [k for k in images if "data" in (assets[k].get("roles") or [])] or images
    if band_count:
        fitting = [k for k in data if len(_band_names(assets[k], {})) == band_count]
        data = fitting or data
    if min_bands:
        fitting = [k for k in data if len(_band_names(assets[k], {})) >= min_bands]
        data = fitting or data
    if len(data) == 1:
        return data[0]
    raise ValueError(f"{where}: item {item_id} has {len(data) or 'no'} GeoTIFF data assets "
                     f"({', '.join(data or keys)}); pick one with {option}")


def expand_stac(source: str, asset_key: str | None = None,
                band_count: int | None = None,
                min_bands: int | None = None,
                option: str = "--stac-asset KEY") -> list[tuple[str, SceneInfo]]:
    """(href, info) of every item of the STAC document at ``source`` (module docstring);
    ``option``: what picks an asset, named in errors (:func:`choose_asset`)."""
    import pystac

    where = redact(source)
    try:
        doc = _read_json(source)
    except (OSError, ValueError) as exc:
        raise ValueError(f"STAC input {where} cannot be read: {redact(str(exc))}") from None
    kind = doc.get("type")
    if kind == "Feature":
        items = [pystac.Item.from_dict(doc)]
        items[0].set_self_href(source)
    elif kind == "FeatureCollection":
        collection = pystac.ItemCollection.from_dict(doc)
        items = list(collection.items)
    elif kind in ("Catalog", "Collection"):
        catalog = pystac.read_file(source)
        items = list(catalog.get_items(recursive=True))
    else:
        raise ValueError(f"STAC input {where}: type {kind!r} is neither an item (Feature), an "
                         "item collection (FeatureCollection) nor a catalog or collection")
    if not items:
        logger.warning("STAC input %s holds no items", where)
    out = []
    for item in items:
        assets = {k: a.to_dict() for k, a in item.assets.items()}
        key = choose_asset(item.id, assets, asset_key, band_count, where, min_bands, option)
        href = item.assets[key].get_absolute_href() or item.assets[key].href
        if kind == "FeatureCollection" and not is_remote(href) and not href.startswith("/"):
            # relative hrefs of a saved search resolve against the file's folder
            base = source.rsplit("/", 1)[0] if "/" in source else "."
            href = f"{base}/{href}"
        props = item.properties
        gsd = props.get("gsd", assets[key].get("gsd"))
        angle = props.get("view:off_nadir")
        out.append((href, SceneInfo(
            stac_id=item.id, datetime=_utc(item.datetime or props.get("start_datetime")),
            view_angle=None if angle is None else float(angle),
            gsd=None if gsd is None else float(gsd),
            band_names=_band_names(assets[key], props))))
    return out


def tiff_datetime(tags: dict) -> str | None:
    """ISO UTC time of a GeoTIFF's ``TIFFTAG_DATETIME`` ("YYYY:MM:DD HH:MM:SS"), else None."""
    value = tags.get("TIFFTAG_DATETIME")
    if not value:
        return None
    try:
        return _utc(datetime.strptime(value.strip(), "%Y:%m:%d %H:%M:%S"))
    except ValueError:
        return None
