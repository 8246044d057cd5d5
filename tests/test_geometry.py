"""mnc_d2.geometry: mask -> polygon, regularisation, pixel <-> map."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from affine import Affine
from shapely.geometry import Polygon, box

from mnc_d2.geometry.polygons import (
    dominant_orientation,
    map_to_pixel,
    mask_to_polygon,
    mask_to_polygons,
    pixel_to_map,
    regularize_rectilinear,
)


def test_l_shape_traced_exactly():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:12, 3:7] = True  # vertical bar: rows 2..11, cols 3..6
    mask[8:12, 7:15] = True  # foot: rows 8..11, cols 7..14
    poly = mask_to_polygon(mask)
    expected = Polygon([(3, 2), (7, 2), (7, 8), (15, 8), (15, 12), (3, 12)])
    assert poly.is_valid
    assert poly.area == mask.sum() == 72
    assert poly.symmetric_difference(expected).area == 0
    assert shapely.normalize(poly.simplify(0)).equals(shapely.normalize(expected))


def test_traced_in_frame_coordinates_at_the_frame_edge():
    # Tracing works on the mask's bounding box; coordinates must still be the frame's.
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[15:20, 26:30] = 1
    assert mask_to_polygon(mask).equals(box(26, 15, 30, 20))


def test_holed_square_keeps_hole():
    mask = np.zeros((16, 16), dtype=bool)
    mask[2:12, 2:12] = True
    mask[5:9, 5:9] = False
    poly = mask_to_polygon(mask)
    assert len(poly.interiors) == 1
    assert poly.area == 100 - 16
    assert Polygon(poly.interiors[0]).equals(box(5, 5, 9, 9))


def test_separate_regions_and_min_area():
    mask = np.zeros((10, 10), dtype=bool)
    mask[0:5, 0:5] = True
    mask[8:10, 8:10] = True
    polys = mask_to_polygons(mask, min_area=5)
    assert [p.area for p in polys] == [25]
    assert mask_to_polygons(np.zeros((4, 4), bool)) == []
    with pytest.raises(ValueError, match="mask must be"):
        mask_to_polygons(np.zeros((2, 2, 2)))


def _rotated_l(angle_deg: float) -> Polygon:
    l_shape = Polygon([(0, 0), (40, 0), (40, 15), (15, 15), (15, 40), (0, 40)])
    return shapely.affinity.rotate(l_shape, angle_deg, origin=(0, 0))


def test_regularize_turns_a_blob_back_into_an_l():
    truth = _rotated_l(23)
    # A "blobby" prediction: the L's outline with noisy, rounded corners.
    # Rounded convex corners and a filled-in concave corner, as the seed's MNC produced.
    blob = truth.buffer(-4, quad_segs=4).buffer(8, quad_segs=4).buffer(-4, quad_segs=4)
    rng = np.random.default_rng(0)
    coords = np.asarray(blob.exterior.coords)[:-1]
    coords = coords + rng.normal(0, 0.4, coords.shape)
    noisy = Polygon(coords)
    regular = regularize_rectilinear(noisy)
    assert math.degrees(dominant_orientation(regular)) == pytest.approx(23, abs=1.5)
    iou = lambda a, b: a.intersection(b).area / a.union(b).area  # noqa: E731
    assert iou(regular, truth) > iou(noisy, truth)
    assert iou(regular, truth) > 0.93
    assert len(regular.exterior.coords) == 7  # six right-angled corners


def test_regularize_falls_back_for_round_shapes():
    disk = shapely.Point(0, 0).buffer(10, quad_segs=16)
    assert regularize_rectilinear(disk).equals(disk)


def test_pixel_map_roundtrip():
    transform = Affine(0.5, 0, 500000.0, 0, -0.5, 3700000.0)
    poly = box(10, 20, 30, 40)
    mapped = pixel_to_map(poly, transform)
    assert mapped.bounds == (500005.0, 3699980.0, 500015.0, 3699990.0)
    back = map_to_pixel(mapped, transform)
    assert back.equals_exact(shapely.normalize(poly), 1e-9) or back.symmetric_difference(poly).area < 1e-9


def test_regularize_from_a_rasterised_rotated_l():
    import rasterio.features

    truth = shapely.affinity.translate(_rotated_l(23), 40, 5)
    mask = rasterio.features.rasterize([truth], out_shape=(80, 80)).astype(bool)
    plain = mask_to_polygon(mask, simplify_tolerance=0.5)
    regular = mask_to_polygon(mask, simplify_tolerance=0.5, regularize=True)
    assert math.degrees(dominant_orientation(regular)) == pytest.approx(23, abs=2)
    iou = lambda a, b: a.intersection(b).area / a.union(b).area  # noqa: E731
    assert iou(regular, truth) > 0.93
    assert len(regular.exterior.coords) < len(plain.exterior.coords)


def test_min_edge_merges_a_notch_and_staircase_away():
    """A 40 x 20 rectangle with a 2 px notch and a 2 px step keeps them as corners without
    min_edge; with min_edge 3 px it comes back as a rectangle (4 corners), nearly in place."""
    from mnc_d2.geometry.polygons import regularize_rectilinear

    notched = Polygon([(0, 0), (16, 0), (16, 2), (18, 2), (18, 0), (40, 0), (40, 20), (24, 20),
                       (24, 22), (0, 22)])
    plain = regularize_rectilinear(notched)
    merged = regularize_rectilinear(notched, min_edge=3.0)
    assert len(merged.exterior.coords) - 1 == 4 < len(plain.exterior.coords) - 1
    assert merged.symmetric_difference(notched).area < 0.1 * notched.area


def test_align_neighbours_makes_close_near_parallel_buildings_parallel():
    from shapely import affinity
    from shapely.geometry import box

    from mnc_d2.geometry.align import align_neighbours, neighbour_angle_spread
    from mnc_d2.geometry.polygons import dominant_orientation

    a = box(0, 0, 20, 10)  # 0 degrees
    b = affinity.rotate(box(25, 0, 45, 10), 6, origin="centroid")  # 5 px away, 6 degrees
    c = affinity.rotate(box(0, 15, 20, 25), 30, origin="centroid")  # close but 30 degrees off
    d = affinity.rotate(box(200, 200, 220, 210), 4, origin="centroid")  # near parallel, far
    polys = [a, b, c, d]
    spread, pairs = neighbour_angle_spread(polys, max_gap=10, max_angle_deg=10)
    assert pairs == 1 and spread == pytest.approx(6, abs=1e-6)
    out = align_neighbours(polys, max_angle_deg=10, max_gap=10)
    # a and b (equal areas) meet at 3 degrees; c and d are left exactly as they were
    assert math.degrees(dominant_orientation(out[0])) == pytest.approx(3, abs=1e-6)
    assert math.degrees(dominant_orientation(out[1])) == pytest.approx(3, abs=1e-6)
    assert out[2].equals_exact(c, 0) and out[3].equals_exact(d, 0)
    assert [p.area for p in out] == pytest.approx([p.area for p in polys])
    assert neighbour_angle_spread(out, 10, 10)[0] == pytest.approx(0, abs=1e-6)
    assert align_neighbours(polys, max_angle_deg=0) == polys
    assert align_neighbours([a]) == [a] and align_neighbours([]) == []


def test_instances_to_polygons_aligns_kept_neighbours_only():
    import rasterio.features
    import torch
    from detectron2.structures import Instances
    from shapely import affinity

    from mnc_d2.geometry.align import neighbour_angle_spread
    from mnc_d2.geometry.instances import instances_to_polygons

    shapes = [affinity.rotate(box(10, 10, 50, 30), 3, origin="centroid"),
              affinity.rotate(box(55, 10, 95, 30), -4, origin="centroid"),
              affinity.rotate(box(10, 36, 50, 56), 5, origin="centroid")]
    masks = np.stack([rasterio.features.rasterize([s], out_shape=(80, 100)) for s in shapes])
    inst = Instances((80, 100), pred_masks=torch.as_tensor(masks.astype(bool)),
                     scores=torch.tensor([0.9, 0.8, 0.3]))
    plain = instances_to_polygons(inst, score_thresh=0.2)
    aligned = instances_to_polygons(inst, score_thresh=0.2, align_deg=10, align_gap=10,
                                    align_min_score=0.5)
    before = neighbour_angle_spread([p for p, _ in plain[:2]], 10, 10)[0]
    after = neighbour_angle_spread([p for p, _ in aligned[:2]], 10, 10)[0]
    assert before > 4 and after < 1e-6
    assert aligned[2][0].equals_exact(plain[2][0], 0)  # under align_min_score: untouched
    assert [s for _, s in aligned] == [s for _, s in plain]


def _random_masks(rng, count: int, size: int = 64) -> np.ndarray:
    """(count, size, size) masks: unions of rectangles (L shapes, separate blobs), some with
    holes, some touching the frame's edges, some empty."""
    masks = np.zeros((count, size, size), dtype=bool)
    for mask in masks[1:]:  # the first stays empty
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(-4, size - 4, 2)
            h, w = rng.integers(2, 30, 2)
            mask[max(r, 0):r + h, max(c, 0):c + w] = True
        if rng.random() < 0.5:  # a courtyard inside the last rectangle, where it is 9 px wide
            r, c = max(r, 0) + 3, max(c, 0) + 3
            if mask[r - 3:r + 6, c - 3:c + 6].all():
                mask[r:r + 3, c:c + 3] = False
    return masks


@pytest.mark.parametrize("kwargs", [{}, {"simplify_tolerance": 1.5},
                                    {"simplify_tolerance": 0.5, "regularize": True,
                                     "min_edge": 2.0, "min_area": 6.0}])
def test_masks_traced_in_one_pass_equal_one_by_one(kwargs, monkeypatch):
    from mnc_d2.geometry import polygons

    masks = _random_masks(np.random.default_rng(3), 40)
    alone = [mask_to_polygon(m, **kwargs) for m in masks]
    for width in (polygons.PACK_WIDTH, 50):  # one canvas row, and many rows of crops
        monkeypatch.setattr(polygons, "PACK_WIDTH", width)
        packed = polygons.masks_to_polygon(masks, **kwargs)
        assert len(packed) == len(masks) and packed[0] is None
        for k, (a, b) in enumerate(zip(alone, packed)):
            assert (a is None) == (b is None), k
            # same vertices in the same order, not only the same area
            assert a is None or shapely.equals_exact(a, b, 0), k
    assert sum(p is not None and len(p.interiors) > 0 for p in alone) >= 3  # holes covered


def test_masks_traced_in_one_pass_edge_cases():
    from mnc_d2.geometry.polygons import masks_to_polygon

    assert masks_to_polygon(np.zeros((0, 8, 8), bool)) == []
    assert masks_to_polygon(np.zeros((2, 8, 8), bool)) == [None, None]
    full = np.ones((1, 8, 8), bool)  # the whole frame
    assert masks_to_polygon(full)[0].equals(box(0, 0, 8, 8))
    with pytest.raises(ValueError, match=r"masks\[0\] must be"):
        masks_to_polygon([np.zeros((2, 2, 2))])


@pytest.mark.parametrize("crs, utm, metres", [
    ("EPSG:4326", True, False),     # degrees
    ("EPSG:3857", True, True),      # Web Mercator: metres, but stretched with latitude
    ("EPSG:32611", False, True),    # UTM 11N
    ("EPSG:2229", False, False),    # California zone 5, US survey feet
])
def test_which_crs_measure_metres_as_they_stand(crs, utm, metres):
    from mnc_d2.geometry.crs import is_mercator, metre_units, needs_utm

    assert needs_utm(crs) is utm
    assert metre_units(crs) is metres
    assert is_mercator(crs) is (crs == "EPSG:3857")


def test_the_local_utm_zone_is_geopandas_estimate_without_its_query():
    """utm_crs_of gives the zone geopandas' estimate_utm_crs (a pyproj database query) gives,
    from geographic, Web Mercator and UTM coordinates, both hemispheres, at random places and
    next to a zone's edge; a frame across the antimeridian takes the zone there."""
    import geopandas as gpd
    import numpy as np
    import shapely
    from pyproj import CRS

    from mnc_d2.geometry.crs import utm_crs_of

    rng = np.random.default_rng(0)
    places = [(rng.uniform(-179.5, 179.5), rng.uniform(-79, 83)) for _ in range(60)]
    places += [(-114.0001, 36.2), (-113.9999, 36.2), (6.0002, -33.9), (5.9998, 59.9)]
    for lon, lat in places:
        one = gpd.GeoSeries([shapely.box(lon - 0.01, lat - 0.005, lon + 0.01, lat + 0.005)],
                            crs=4326)
        for crs in (4326, 3857, one.estimate_utm_crs()):
            series = one.to_crs(crs)
            expected = CRS.from_user_input(series.estimate_utm_crs()).to_epsg()
            assert utm_crs_of(series) == f"EPSG:{expected}", (lon, lat, crs)
    # Fiji in its UTM zone: bounds from 179.9 E to 179.96 W
    for east in (-179.96, -179.7):  # centre west of 180 degrees, then east of it
        across = gpd.GeoSeries([shapely.box(179.9, -17.1, 180, -17),
                                shapely.box(-180, -17.1, east, -17)], crs=4326).to_crs(32760)
        expected = f"EPSG:{across.estimate_utm_crs().to_epsg()}"
        assert utm_crs_of(across) == expected == ("EPSG:32760" if east < -179.9 else
                                                  "EPSG:32701"), east
