"""Binary masks -> valid building polygons (pixel and map coordinates).

Pixel coordinates follow SpaceNet's ``PolygonWKT_Pix``: x to the right, y down, the pixel (r, c)
covering the square [c, c+1] x [r, r+1]. Polygons are traced along pixel edges by
``rasterio.features.shapes`` (holes kept), made valid, optionally simplified and optionally
regularised to right angles (:func:`regularize_rectilinear`).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from shapely import affinity
from shapely.geometry import Polygon, shape

logger = logging.getLogger(__name__)


def polygonal_parts(geom) -> list[Polygon]:
    """The non-empty Polygons of any geometry (lines and points dropped)."""
    if geom.is_empty:
        return []
    if geom.geom_type == "Polygon":
        return [geom]
    return [g for g in shapely.get_parts(geom) if g.geom_type == "Polygon" and not g.is_empty]


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(r0, c0, r1, c1) of a 2-D mask's non-zero pixels (end exclusive), None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(mask[r0:r1].any(axis=0))  # only the rows that hold the mask
    return r0, int(cols[0]), r1, int(cols[-1]) + 1


def _finish(traced: np.ndarray, simplify_tolerance: float, regularize: bool, min_area: float,
            min_edge: float) -> list[list[Polygon]]:
    """(N,) traced polygons -> for each, its valid (simplified, regularised) parts of area at
    least ``min_area``, in the order make_valid gives them. The GEOS steps run over the array."""
    geoms = shapely.make_valid(traced)
    if simplify_tolerance > 0:
        geoms = shapely.simplify(geoms, simplify_tolerance, preserve_topology=True)
    out = []
    for geom in geoms:
        parts = []
        for part in polygonal_parts(geom):
            if regularize:
                part = regularize_rectilinear(part, min_edge=min_edge)
            if part.area >= max(min_area, 1e-9):
                parts.append(part)
        out.append(parts)
    return out


def mask_to_polygons(mask: np.ndarray, simplify_tolerance: float = 0.0,
                     regularize: bool = False, min_area: float = 0.0,
                     min_edge: float = 0.0) -> list[Polygon]:
    """Trace the connected regions of a binary mask as polygons in pixel coordinates.

    mask: (H, W) bool/0-1 array. Each 4-connected region gives one polygon, holes included;
    parts below ``min_area`` px are dropped; ``min_edge``: see :func:`regularize_rectilinear`.
    Returns valid polygons, largest first.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    bounds = _bounds(mask)
    if bounds is None:
        return []
    # Trace only the mask's bounding box (an instance covers a small part of the frame); the
    # translation puts the coordinates back in the frame's pixel grid.
    r0, c0, r1, c1 = bounds
    crop = np.ascontiguousarray(mask[r0:r1, c0:c1], dtype=np.uint8)
    traced = [shape(geojson) for geojson, value in rasterio.features.shapes(
        crop, mask=crop.astype(bool), connectivity=4, transform=Affine.translation(c0, r0))
        if value == 1]
    polygons = [part for parts in _finish(np.asarray(traced, dtype=object), simplify_tolerance,
                                          regularize, min_area, min_edge) for part in parts]
    polygons.sort(key=lambda p: -p.area)
    return polygons


def mask_to_polygon(mask: np.ndarray, **kwargs) -> Polygon | None:
    """The largest polygon of a mask (one building per instance mask), or None if empty."""
    polygons = mask_to_polygons(mask, **kwargs)
    return polygons[0] if polygons else None


# Width of the canvas rows that :func:`masks_to_polygon` packs the masks' crops into.
PACK_WIDTH = 1024


def masks_to_polygon(masks, simplify_tolerance: float = 0.0, regularize: bool = False,
                     min_area: float = 0.0, min_edge: float = 0.0) -> list[Polygon | None]:
    """:func:`mask_to_polygon` of every mask of a stack, traced in one pass: the same polygons.

    masks: (R, H, W) bool/0-1 array (or a sequence of (H, W) arrays). Each mask's bounding-box
    crop is written with its own label (index + 1) into one canvas, rows of crops side by side
    (shelf packing, rows ``PACK_WIDTH`` px wide or the widest crop), and the canvas is traced
    once: regions of different labels never merge, so each mask's regions come out as they
    would alone, shifted back by their crop's offset. One trace per tile instead of one per
    building saves GDAL's per-call set-up, and the GEOS steps run over the whole array.
    Returns (R,) polygons, None for an empty mask.
    """
    boxes = []
    for k, mask in enumerate(masks):
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"masks[{k}] must be (H, W), got shape {mask.shape}")
        bounds = _bounds(mask)
        if bounds is not None:
            boxes.append((k, mask, *bounds))
    result: list[Polygon | None] = [None] * len(masks)
    if not boxes:
        return result
    width = max(PACK_WIDTH, max(c1 - c0 for _, _, _, c0, _, c1 in boxes))
    places, x, y, shelf = [], 0, 0, 0  # (canvas row, canvas col) of each crop
    for _, _, r0, c0, r1, c1 in boxes:
        if x + (c1 - c0) > width:
            x, y, shelf = 0, y + shelf, 0
        places.append((y, x))
        x, shelf = x + (c1 - c0), max(shelf, r1 - r0)
    canvas = np.zeros((y + shelf, width), dtype=np.int32)
    shift = {}  # label -> (dx, dy) from canvas to frame pixels
    for (k, mask, r0, c0, r1, c1), (y, x) in zip(boxes, places):
        window = canvas[y:y + r1 - r0, x:x + c1 - c0]
        window[mask[r0:r1, c0:c1].astype(bool)] = k + 1
        shift[k + 1] = np.array([c0 - x, r0 - y], dtype=np.float64)
    traced, labels = [], []
    for geojson, value in rasterio.features.shapes(canvas, mask=canvas > 0, connectivity=4):
        offset = shift[int(value)]
        rings = [np.asarray(ring, dtype=np.float64) + offset
                 for ring in geojson["coordinates"]]
        traced.append(Polygon(rings[0], rings[1:]))
        labels.append(int(value) - 1)
    for k, parts in zip(labels, _finish(np.asarray(traced, dtype=object), simplify_tolerance,
                                        regularize, min_area, min_edge)):
        for part in parts:  # the first of the largest, as mask_to_polygon's stable sort
            if result[k] is None or part.area > result[k].area:
                result[k] = part
    return result


def _edges(poly: Polygon) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, angles in radians) of the exterior's edges."""
    d = np.diff(np.asarray(poly.exterior.coords), axis=0)
    return np.hypot(d[:, 0], d[:, 1]), np.arctan2(d[:, 1], d[:, 0])


def dominant_orientation(poly: Polygon) -> float:
    """Length-weighted dominant edge direction of the exterior, in radians in [0, pi/2)."""
    length, angle = _edges(poly)
    # Directions modulo 90 degrees: average on the circle of 4*angle.
    s, c = (length * np.sin(4 * angle)).sum(), (length * np.cos(4 * angle)).sum()
    return (math.atan2(s, c) / 4.0) % (math.pi / 2)


def rectilinearity(poly: Polygon, theta: float, tolerance_deg: float = 15.0) -> float:
    """Share of the exterior's length running within ``tolerance_deg`` of theta or theta+90."""
    length, angle = _edges(poly)
    off = np.abs((angle - theta + math.pi / 4) % (math.pi / 2) - math.pi / 4)
    return float(length[off <= math.radians(tolerance_deg)].sum() / max(length.sum(), 1e-12))


def _merge_short_lines(lines: list, min_edge: float) -> list:
    """Drop the shortest line while it is shorter than ``min_edge`` (and more than 4 remain);
    its two neighbours run the same way and fuse at their length-weighted mean coordinate.
    ``lines``: [(is_horizontal, coordinate, length)] around a closed ring (order is cyclic)."""
    lines = list(lines)
    while len(lines) > 4:
        k = min(range(len(lines)), key=lambda i: lines[i][2])
        if lines[k][2] >= min_edge:
            break
        lines = lines[k - 1:] + lines[:k - 1] if k else lines[-1:] + lines[:-1]  # prev, k, next
        (h, a, la), short, (_, b, lb) = lines[:3]
        lines = [(h, (a * la + b * lb) / max(la + lb, 1e-12), la + lb + short[2])] + lines[3:]
    return lines


def _rectilinear_ring(coords: np.ndarray, min_edge: float = 0.0) -> np.ndarray | None:
    """Make a closed ring (already rotated so its edges are near-axis-aligned) rectilinear.

    Each edge is classed horizontal or vertical by its direction; runs of edges of one class
    merge into one line at their length-weighted mean coordinate; lines shorter than
    ``min_edge`` are merged away (:func:`_merge_short_lines`); consecutive lines meet at right
    angles. Returns the new closed ring, or None if it degenerates.
    """
    pts = coords[:-1]
    d = np.roll(pts, -1, axis=0) - pts
    length = np.hypot(d[:, 0], d[:, 1])
    keep = length > 1e-9
    pts, d, length = pts[keep], d[keep], length[keep]
    if len(pts) < 4:
        return None
    horizontal = np.abs(d[:, 0]) >= np.abs(d[:, 1])
    # Rotate so the ring starts at a class change: runs then do not wrap around.
    changes = np.flatnonzero(horizontal != np.roll(horizontal, 1))
    if changes.size < 4:
        return None
    start = changes[0]
    pts, d, length, horizontal = (np.roll(a, -start, axis=0) for a in (pts, d, length, horizontal))
    mid = pts + d / 2.0
    run_id = np.cumsum(np.r_[0, horizontal[1:] != horizontal[:-1]])
    lines = []  # (is_horizontal, coordinate, length)
    for rid in range(run_id[-1] + 1):
        sel = run_id == rid
        axis = 1 if horizontal[sel][0] else 0
        lines.append((bool(horizontal[sel][0]),
                      float(np.average(mid[sel, axis], weights=length[sel])),
                      float(length[sel].sum())))
    if len(lines) % 2 or len(lines) < 4:
        return None
    if min_edge > 0:
        lines = _merge_short_lines(lines, min_edge)
    ring = []
    for i, (is_h, value, _) in enumerate(lines):
        nxt_h, nxt_value, _ = lines[(i + 1) % len(lines)]
        if is_h == nxt_h:
            return None
        ring.append((nxt_value, value) if is_h else (value, nxt_value))
    ring.append(ring[0])
    return np.asarray(ring)


def regularize_rectilinear(poly: Polygon, min_iou: float = 0.75,
                           min_rectilinearity: float = 0.5, max_circularity: float = 0.85,
                           min_edge: float = 0.0) -> Polygon:
    """Snap a building outline to right angles along its dominant orientation.

    The seed's MNC produced smooth convex blobs for L-shaped buildings; rectilinear outlines fit
    SpaceNet's hand-drawn footprints better. The polygon is rotated so its dominant direction is
    axis-aligned, each ring is made rectilinear (see ``_rectilinear_ring``), and the result is
    rotated back. Round outlines (less than ``min_rectilinearity`` of the length near the two
    dominant directions, e.g. silos) are left alone, and so is any result that is invalid or whose
    IoU with the input falls below ``min_iou``. Outlines rounder than a square (circularity
    4*pi*area/perimeter^2 above ``max_circularity``; a square has 0.785, a disk 1) are left alone.
    ``min_edge`` (pixels; 0 = off): edges shorter than this are merged into their neighbours,
    so a mask's staircase and notches do not survive as corners.
    """
    if poly.is_empty or len(poly.exterior.coords) < 5:
        return poly
    # Orientation from a 1 px simplification: mask outlines are pixel staircases whose raw edges
    # are all axis-aligned whatever the building's angle.
    smooth = poly.simplify(1.0, preserve_topology=True)
    theta = dominant_orientation(smooth)
    circularity = 4 * math.pi * smooth.area / max(smooth.exterior.length ** 2, 1e-12)
    if circularity > max_circularity or rectilinearity(smooth, theta) < min_rectilinearity:
        return poly
    origin = poly.centroid
    rotated = affinity.rotate(smooth, -theta, origin=origin, use_radians=True)
    shell = _rectilinear_ring(np.asarray(rotated.exterior.coords), min_edge)
    if shell is None:
        return poly
    holes = [r for r in (_rectilinear_ring(np.asarray(h.coords), min_edge)
                         for h in rotated.interiors) if r is not None]
    candidate = Polygon(shell, holes)
    if not candidate.is_valid:
        candidate = shapely.make_valid(candidate)
        parts = polygonal_parts(candidate)
        if not parts:
            return poly
        candidate = max(parts, key=lambda p: p.area)
    # Lines at (nearly) the same coordinate leave repeated or collinear corners: drop them (a
    # 1e-6 px tolerance absorbs the rotation's rounding).
    candidate = affinity.rotate(candidate, theta, origin=origin, use_radians=True).simplify(1e-6)
    union = poly.union(candidate).area
    if union <= 0 or poly.intersection(candidate).area / union < min_iou:
        return poly
    return candidate


def pixel_to_map(geom, transform: Affine):
    """Pixel-coordinate geometry -> map coordinates through a rasterio affine transform."""
    t = Affine(*transform[:6]) if not isinstance(transform, Affine) else transform
    return affinity.affine_transform(geom, [t.a, t.b, t.d, t.e, t.c, t.f])


def map_to_pixel(geom, transform: Affine):
    """Map-coordinate geometry -> pixel coordinates (inverse of :func:`pixel_to_map`)."""
    t = Affine(*transform[:6]) if not isinstance(transform, Affine) else transform
    return pixel_to_map(geom, ~t)
