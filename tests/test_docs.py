"""The docs' rendered sections (the MNC fidelity table, benchmark tables) hold exactly what their
sources give: the config and the committed reports in bench/results/."""

from __future__ import annotations

import pytest

from bench import render_docs
from mnc_d2 import fidelity
from mnc_d2.utils.docs import render_sections, section_names


@pytest.mark.parametrize("name", render_docs.DOCS)
def test_rendered_sections_equal_their_sources(repo_root, name):
    path = repo_root / name
    text = path.read_text(encoding="utf-8")
    assert text == render_docs.rendered(path, render_docs.renderers()), (
        f"{name} differs from its sources: run python -m bench.render_docs")


def test_readme_has_the_fidelity_table(repo_root):
    assert "fidelity" in section_names((repo_root / "README.md").read_text(encoding="utf-8"))


def test_fidelity_defaults_are_read_from_the_config():
    defaults, base = fidelity.default_configs()
    table = fidelity.fidelity_table(defaults, base)
    assert "`MODEL.MNC.MASK_THRESHOLD`: 0.5 |" in table
    assert "`MODEL.ROI_HEADS.NMS_THRESH_TEST`: 0.5 (0.3)" in table  # Detectron2's, then the base's
    defaults.MODEL.MNC.MASK_THRESHOLD = 0.4
    base.MODEL.MNC.MASK_THRESHOLD = 0.4
    assert "`MODEL.MNC.MASK_THRESHOLD`: 0.4 |" in fidelity.fidelity_table(defaults, base)


def test_every_mnc_key_that_departs_from_the_original_has_a_row():
    """Each MODEL.MNC key is in the table (a new key must say how it relates to the original),
    except the head's purely structural sizes that rows already explain in words."""
    defaults, _ = fidelity.default_configs()
    listed = {k for rule in fidelity.RULES for k in rule.keys}
    unlisted = {f"MODEL.MNC.{k}" for k, v in defaults.MODEL.MNC.items() if not isinstance(v, dict)}
    unlisted -= listed
    assert unlisted <= {"MODEL.MNC.SAMPLING_RATIO", "MODEL.MNC.NUM_CONV", "MODEL.MNC.CONV_DIM",
                        "MODEL.MNC.NORM", "MODEL.MNC.BOX_GRAD_CLIP"}, sorted(unlisted)


def test_a_section_without_renderer_is_an_error():
    text = "a\n<!-- BEGIN nothing -->\nold\n<!-- END nothing -->\n"
    with pytest.raises(KeyError, match="X.md: rendered section 'nothing'"):
        render_sections(text, {}, source="X.md")
    assert render_sections(text, {"nothing": lambda: "new"}) == \
        "a\n<!-- BEGIN nothing -->\nnew\n<!-- END nothing -->\n"
