"""The SpaceNet metric's rule sets, one small description each.

:mod:`.spacenet_metric` reads these fields instead of comparing rule names, so a rule set is
documented, tested and extended in one place. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..data.versions import nadir_angle, nadir_bin


def city_first_three(image_id: str) -> str:
    """The tester's city: the first three ``_`` fields (``AOI_2_Vegas_img12`` -> ``AOI_2_Vegas``).

    The tester fails on an id with fewer than three fields; so does this, naming the id.
    """
    parts = [p for p in str(image_id).split("_")]
    while parts and parts[-1] == "":  # Java's split drops trailing empty fields
        parts.pop()
    if len(parts) < 3:
        raise ValueError(f"ImageId {image_id!r} has fewer than three '_'-separated fields; the "
                         "SpaceNet tester groups images by the first three (e.g. AOI_2_Vegas_img1)")
    return "_".join(parts[:3])


def city_before_last(image_id: str) -> str:
    """Everything before the last ``_`` (``AOI_2_Vegas_img1234`` -> ``AOI_2_Vegas``)."""
    head, sep, _ = str(image_id).rpartition("_")
    return head if sep else str(image_id)


@dataclass(frozen=True)
class RuleSet:
    """How one reference scorer reads, filters, overlaps, orders and groups polygons.

    ``reader``: ``"tester"`` cuts the CSV text like the Java tester
    (:mod:`.tester_polygons`: first polygon of a MULTIPOLYGON, rings split at ``),(``, no
    repair, even-odd regions, shoelace areas); ``"wkt"`` parses WKT with shapely (GEOS areas).
    ``truth_area_inclusive`` / ``proposal_area_inclusive``: keep a polygon whose area equals the
    minimum area. ``invalid_proposal``: ``"region"`` (the reader's region), ``"buffer0"``.
    ``invalid_truth``: ``"region"`` or ``"never_match"`` (IoU 0 with everything).
    ``union``: ``"areas"`` (area_s + area_t - overlap, with the reader's areas) or ``"geos"``
    (area of the GEOS union). ``order``: proposals by descending confidence, ``"stable"`` (file
    order on ties, NaN last) or ``"pandas"`` (pandas' default quicksort). ``group``: image id ->
    city.
    """

    name: str
    reference: str
    reader: str
    truth_area_inclusive: bool
    proposal_area_inclusive: bool
    invalid_proposal: str
    invalid_truth: str
    union: str
    order: str
    group: object


SPACENET = RuleSet(
    name="spacenet",
    reference="SpaceNet 2 offline tester v2.0 (Java, walrus71): the leaderboard scorer",
    reader="tester", truth_area_inclusive=True, proposal_area_inclusive=True,
    invalid_proposal="region", invalid_truth="region", union="areas", order="stable",
    group=city_first_three,
)

SOLARIS = RuleSet(
    name="solaris",
    reference="solaris 0.4.0 spacenet_buildings_2 (Python)",
    reader="wkt", truth_area_inclusive=True, proposal_area_inclusive=False,
    invalid_proposal="buffer0", invalid_truth="never_match", union="geos", order="pandas",
    group=city_before_last,
)

RULESETS = {r.name: r for r in (SPACENET, SOLARIS)}


def area_kept(areas, min_area: float, inclusive: bool):
    """Which polygons the minimum-area filter keeps: ``area >= min_area`` when ``inclusive``
    (the rule set's ``truth_area_inclusive`` / ``proposal_area_inclusive``), else ``>``."""
    return areas >= min_area if inclusive else areas > min_area
RULES = tuple(RULESETS)


def get_rules(name: str | RuleSet) -> RuleSet:
    """The rule set called ``name`` (or ``name`` itself when it is one); a clear error listing
    the known ones otherwise. A ``reader="tester"`` rule set is checked: that reader has the
    tester's invalid-polygon handling and union only."""
    if isinstance(name, RuleSet):
        if name.reader == "tester" and (name.invalid_proposal, name.invalid_truth,
                                        name.union) != ("region", "region", "areas"):
            raise ValueError(f"rule set {name.name!r}: the tester reader takes invalid polygons "
                             "as their even-odd regions and unions by areas (invalid_proposal="
                             "'region', invalid_truth='region', union='areas'), not "
                             f"{name.invalid_proposal!r}, {name.invalid_truth!r}, {name.union!r}")
        return name
    try:
        return RULESETS[name]
    except KeyError:
        raise ValueError(f"rules={name!r} is not one of {RULES}") from None


# --- grouping: how per-image counts are summed into the groups whose F1s are averaged ----------

GROUP_BY = ("auto", "city", "nadir", "none")


def one_group(image_id: str) -> str:
    """Every image in one group (the score is then the F1 of the global sums)."""
    return "all"


def with_grouping(rules: RuleSet, group_by: str | None, image_ids) -> tuple[RuleSet, str]:
    """``rules`` with its grouping replaced by ``group_by`` (``auto``: ``nadir`` when every
    ImageId names an off-nadir angle, as SpaceNet 4's do, else the rules' city); returns the rule
    set and the grouping used."""
    group_by = group_by or "auto"
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by={group_by!r} is not one of {GROUP_BY}")
    if group_by == "auto":
        ids = list(image_ids)
        group_by = "nadir" if ids and all(nadir_angle(i) is not None for i in ids) else "city"
    group = {"city": rules.group, "nadir": nadir_bin, "none": one_group}[group_by]
    return replace(rules, group=group), group_by
