"""The scorer's convex fast path: the same overlaps as GEOS, and the same matching."""

from __future__ import annotations

import numpy as np
import shapely
from shapely import affinity

from mnc_d2.evaluation import spacenet_metric as sm
from mnc_d2.evaluation.convex_overlap import convex_rings, pair_overlap_areas
from mnc_d2.evaluation.tester_polygons import table_from_geometries


def _rings(geoms):
    t = table_from_geometries(["x"] * len(geoms), geoms)
    return convex_rings(t.coords, t.ring_offsets, t.poly_offsets)


def _random_convex(rng, n):
    centre, radius = rng.uniform(0, 100, 2), rng.uniform(5, 30)
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    return shapely.Polygon(centre + np.c_[radius * np.cos(angles),
                                          radius * np.sin(angles) * rng.uniform(0.3, 1)])


def test_overlaps_equal_geos_on_random_and_degenerate_pairs():
    rng = np.random.default_rng(0)
    a = [_random_convex(rng, rng.integers(3, 9)) for _ in range(2000)]
    b = [_random_convex(rng, rng.integers(3, 9)) if k % 3 else
         affinity.translate(a[k], *rng.choice([0.0, 0.5, 10.0], 2)) for k in range(2000)]
    square = shapely.box(0, 0, 10, 10)
    clockwise = shapely.Polygon([(0, 0), (0, 10), (10, 10), (10, 0)])
    diamond = shapely.Polygon([(5, -5), (15, 5), (5, 15), (-5, 5)])  # square inside, corners on it
    special = [(square, square), (square, shapely.box(10, 0, 20, 10)),  # same / shared edge
               (square, shapely.box(10, 10, 20, 20)), (square, shapely.box(2, 2, 5, 5)),
               (square, shapely.box(5, 0, 15, 10)), (clockwise, square), (square, diamond),
               (square, shapely.box(30, 30, 40, 40))]
    a += [p for p, _ in special]
    b += [q for _, q in special]
    ca, va, na, area_a = _rings(a)
    cb, vb, nb, _ = _rings(b)
    assert ca.all() and cb.all()
    np.testing.assert_allclose(area_a, shapely.area(np.array(a, dtype=object)), atol=1e-9)
    fast = pair_overlap_areas(va, na, vb, nb)
    ref = shapely.area(shapely.intersection(np.array(a, dtype=object), np.array(b, dtype=object)))
    np.testing.assert_allclose(fast, ref, rtol=1e-11, atol=1e-9)
    assert fast[-len(special):].tolist() == [100.0, 0.0, 0.0, 9.0, 50.0, 100.0, 100.0, 0.0]


def test_only_strictly_convex_simple_rings_take_the_fast_path():
    geoms = [shapely.box(0, 0, 4, 4),
             shapely.Polygon([(0, 0), (4, 0), (4, 2), (2, 2), (2, 4), (0, 4)]),  # L: concave
             shapely.Polygon([(0, 0), (2, 0), (4, 0), (4, 4), (0, 4)]),  # straight vertex
             shapely.Polygon([(0, 0), (4, 4), (4, 0), (0, 4)]),  # bow-tie
             shapely.box(0, 0, 9, 9).difference(shapely.box(3, 3, 6, 6)),  # hole
             shapely.Polygon([(np.cos(t), np.sin(t)) for t in  # pentagram: turns twice
                              np.arange(5) * 4 * np.pi / 5]),
             shapely.Polygon([(np.cos(t), np.sin(t)) for t in np.linspace(0, 6, 12)])]  # 12 > 8
    convex, _, count, _ = _rings(geoms)
    assert convex.tolist() == [True] + [False] * 6
    assert count[0] == 4


def test_fast_path_changes_no_match_or_count():
    """Random scenes of rectangles, L-shapes and near-ties scored with the fast path and with
    GEOS only: identical matches and counts, IoUs equal to rounding."""
    rng = np.random.default_rng(1)
    truth, props, conf, t_img, p_img = [], [], [], [], []
    for image in range(40):
        for _ in range(20):
            x, y = rng.uniform(0, 600, 2)
            w, h = rng.uniform(8, 40, 2)
            shape = shapely.box(x, y, x + w, y + h)
            if rng.random() < 0.3:
                shape = shape.difference(shapely.box(x + w / 2, y + h / 2, x + w, y + h))
            shape = affinity.rotate(shape, rng.uniform(0, 90))
            truth.append(shape)
            t_img.append(f"AOI_2_Vegas_img{image}")
            for _ in range(rng.integers(0, 3)):
                # a proposal moved so that some IoUs sit close to 0.5
                props.append(affinity.translate(shape, rng.normal(0, w / 4), rng.normal(0, 2)))
                conf.append(float(rng.uniform()))
                p_img.append(f"AOI_2_Vegas_img{image}")
    t = table_from_geometries(t_img, truth)
    p = table_from_geometries(p_img, props, conf)
    fast = sm.score_tables(t, p)
    real = sm.convex_rings

    def geos_only(*args):
        convex, vertices, count, area = real(*args)
        return np.zeros_like(convex), vertices, count, np.zeros_like(area)

    sm.convex_rings = geos_only
    try:
        slow = sm.score_tables(t, p)
    finally:
        sm.convex_rings = real
    assert np.array_equal(fast.proposal_match, slow.proposal_match)
    assert (fast.image_tp == slow.image_tp).all() and (fast.image_fp == slow.image_fp).all()
    np.testing.assert_allclose(fast.proposal_iou, slow.proposal_iou, atol=1e-12)
    assert 0 < fast.overall.tp < len(props)


def test_threaded_steps_equal_one_call(monkeypatch):
    """Box pairs, convex overlaps and GEOS overlays cut into slices for threads (and each slice
    into blocks) give exactly the one-call result (the slices are forced here whatever the
    machine's CPU count)."""
    import mnc_d2.utils.chunks as chunks

    rng = np.random.default_rng(3)
    a = [_random_convex(rng, rng.integers(3, 9)) for _ in range(600)]
    b = [affinity.translate(p, *rng.normal(0, 3, 2)) for p in a]
    _, va, na, _ = _rings(a)
    _, vb, nb, _ = _rings(b)
    p_bounds = shapely.bounds(np.array(a, dtype=object))
    t_bounds = shapely.bounds(np.array(b, dtype=object))
    p_img, t_img = rng.integers(0, 5, 600), rng.integers(0, 5, 600)
    one = (pair_overlap_areas(va, na, vb, nb),
           sm._same_image_box_pairs(p_bounds, t_bounds, p_img, t_img))
    monkeypatch.setattr(chunks.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(sm, "_THREAD_CHUNK", 70)
    monkeypatch.setattr(sm, "_SWEEP_PAIRS_PER_BOX", 0)  # box pairs from the STRtree, threaded
    assert len(chunks.row_slices(600, 70)) == 4
    sliced = (pair_overlap_areas(va, na, vb, nb, min_chunk=70, block=40),  # 150 rows: 4 blocks
              sm._same_image_box_pairs(p_bounds, t_bounds, p_img, t_img))
    assert np.array_equal(one[0], sliced[0])
    assert len(one[1][0]) > 600
    assert all(np.array_equal(x, y) for x, y in zip(one[1], sliced[1]))


def _brute_box_pairs(pb, tb, p_img, t_img):
    """Every same-image pair whose closed boxes overlap, by testing all pairs."""
    same = p_img[:, None] == t_img[None, :]
    overlap = ((pb[:, None, 0] <= tb[None, :, 2]) & (pb[:, None, 2] >= tb[None, :, 0])
               & (pb[:, None, 1] <= tb[None, :, 3]) & (pb[:, None, 3] >= tb[None, :, 1]))
    pi, ti = np.nonzero(same & overlap)
    return pi, ti


def test_box_pairs_by_sorting_equal_all_pairs_and_the_strtree(monkeypatch):
    # Integer boxes, so edges and corners touch often (touching counts as overlapping), on six
    # images of one pixel frame; then boxes stacked in a column, where the pairs overlapping
    # along x are many times the boxes and the STRtree answers instead.
    rng = np.random.default_rng(11)

    def boxes(n, frame=60):
        lo = rng.integers(0, frame, (n, 2))
        return np.c_[lo, lo + rng.integers(0, 12, (n, 2))].astype(float)

    pb, tb = boxes(400), boxes(350)
    p_img, t_img = rng.integers(0, 6, 400), rng.integers(0, 6, 350)
    column_p = np.c_[np.zeros(300), np.arange(300) * 3.0, np.full(300, 5.0),
                     np.arange(300) * 3.0 + 3]
    column_t = column_p + [1, 1, 1, 1]
    for case in ((pb, tb, p_img, t_img),
                 (column_p, column_t, np.zeros(300, int), np.zeros(300, int))):
        expected = _brute_box_pairs(*case)
        got = sm._same_image_box_pairs(*case)
        assert all(np.array_equal(x, y) for x, y in zip(got, expected))  # ordered (pi, ti)
        with monkeypatch.context() as m:
            m.setattr(sm, "_SWEEP_PAIRS_PER_BOX", 0)  # the STRtree path alone
            tree = sm._same_image_box_pairs(*case)
        order = np.lexsort((tree[1], tree[0]))
        assert all(np.array_equal(x[order], y) for x, y in zip(tree, expected))
    assert len(expected[0]) > 300
    assert sm._x_overlap_pairs(column_p[:, 0], column_p[:, 2], column_t[:, 0], column_t[:, 2],
                               limit=32 * 600) is None  # 90,000 x-overlaps: the tree's job


def _reference_greedy(order, pi, ti, iou, num_props, threshold):
    """The tester's matching written plainly: each proposal in turn takes its best untaken
    truth (highest IoU, then first truth) if that IoU is above the threshold."""
    match = np.full(num_props, -1)
    taken = set()
    for p in order:
        cands = [(-iou[k], ti[k]) for k in np.flatnonzero(pi == p)
                 if ti[k] not in taken and iou[k] > threshold]
        if cands:
            match[p] = min(cands)[1]
            taken.add(match[p])
    return match


def test_greedy_matching_equals_the_plain_loop():
    """The matching that settles uncontested pairs at once equals the plain greedy loop, on pairs
    where many proposals compete for truths (and many do not), ties included."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        num_props, num_truths, k = 60, 50, 90
        pi, ti = rng.integers(0, num_props, k), rng.integers(0, num_truths, k)
        keep = np.unique(pi * num_truths + ti, return_index=True)[1]
        pi, ti = pi[keep], ti[keep]
        iou = rng.choice([0.3, 0.5, 0.6, 0.6, 0.7, 0.9], len(pi))
        order = rng.permutation(num_props)
        got = sm._greedy_match(order, pi, ti, iou, num_props, num_truths, 0.5)
        assert np.array_equal(got, _reference_greedy(order, pi, ti, iou, num_props, 0.5))


def test_unique_equals_numpy():
    from mnc_d2.utils.arrays import unique

    rng = np.random.default_rng(0)
    for values in (rng.integers(0, 9, 50), rng.normal(size=7), np.zeros(0, dtype=np.int64)):
        assert np.array_equal(unique(values), np.unique(values))
