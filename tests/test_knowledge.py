"""Built-in knowledge files: well-formed, sourced, and used as data."""

from __future__ import annotations

import pytest

from dicomcheck.enums import Role
from dicomcheck.knowledge import builtin_knowledge, parse_fingerprints


def test_every_product_names_its_source_and_status():
    products = builtin_knowledge().products
    assert len(products) >= 40
    for product in products:
        assert product.source and product.status in ("observed", "dictionary", "guess")
        assert product.clauses


PACS_VIEWER_FIELDS = {"manufacturer", "model", "sc_manufacturer", "sc_model"}
SCANNER_MAKERS = ("GE", "Philips", "FUJIFILM", "Agfa", "Carestream", "Canon", "Siemens", "TOSHIBA")


def test_a_pacs_viewer_is_named_only_by_the_capture_equipment():
    """decision-outcomes.md 'Naming a product': the Manufacturer, model or SC device of the series itself; a PACS
    private creator (stamped on originals by the archive) or a last-writer mark never decides."""
    viewers = [p for p in builtin_knowledge().products if p.role is Role.PACS_VIEWER]
    assert len(viewers) >= 12
    for product in viewers:
        for clause in product.clauses:
            fields = {name for name, _ in clause.patterns}
            assert clause.weak or fields <= PACS_VIEWER_FIELDS, (product.id, fields)


def test_a_scanner_makers_name_alone_never_names_its_pacs_viewer():
    for product in builtin_knowledge().products:
        if product.role is not Role.PACS_VIEWER:
            continue
        for clause in product.clauses:
            patterns = dict(clause.patterns)
            for field in ("manufacturer", "sc_manufacturer"):
                if field in patterns and len(patterns) == 1:
                    assert not any(patterns[field].search(maker) for maker in SCANNER_MAKERS), (product.id, field)


def test_general_purpose_viewers_are_known_with_no_role():
    products = {p.id: p for p in builtin_knowledge().products}
    for product_id in ("osirix", "horos", "radiant", "weasis", "microdicom"):
        product = products[product_id]
        assert product.role is None and product.reason, product_id


def test_every_source_names_where_the_fact_comes_from():
    for product in builtin_knowledge().products:
        assert product.source.strip() and product.cited() == f"{product.id} ({product.status})"
        if product.status == "guess":
            assert "http" in product.source or ".md" in product.source, product.id


def test_no_role_needs_its_reason():
    row = {"id": "x", "name": "X", "status": "guess", "source": "s", "match": [{"model": "^X"}]}
    with pytest.raises(ValueError, match="reason"):
        parse_fingerprints({"product": [row | {"role": "none"}]})
    with pytest.raises(ValueError, match="reason"):
        parse_fingerprints({"product": [row | {"role": "pacs_viewer", "reason": "why"}]})
    (product,) = parse_fingerprints({"product": [row | {"role": "none", "reason": "used both ways"}]})
    assert product.role is None and product.reason == "used both ways"


def test_roles_cover_the_contract():
    roles = {p.role for p in builtin_knowledge().products}
    assert {
        Role.SCANNER_CONSOLE,
        Role.PACS_VIEWER,
        Role.INDEPENDENT_WORKSTATION,
        Role.CONSOLE_OR_WORKSTATION,
        Role.ARCHIVE,
    } <= roles


@pytest.mark.parametrize("code", ["70496", "74175", "70544", "75574", "78815", "78012", "78999", "0559T"])
def test_bundled_codes(code):
    assert any(group.contains(code) for group in builtin_knowledge().code_groups)


@pytest.mark.parametrize("code", ["74177", "70450", "76376", "79000", "7801"])
def test_not_bundled_codes(code):
    assert not any(group.contains(code) for group in builtin_knowledge().code_groups)


def test_bad_fingerprint_rows_are_rejected():
    with pytest.raises(ValueError, match="missing 'source'"):
        parse_fingerprints(
            {"product": [{"id": "x", "name": "X", "role": "pacs_viewer", "status": "guess", "match": []}]}
        )
    with pytest.raises(ValueError, match="bad clause"):
        parse_fingerprints(
            {
                "product": [
                    {
                        "id": "x",
                        "name": "X",
                        "role": "pacs_viewer",
                        "status": "guess",
                        "source": "s",
                        "match": [{"colour": "red"}],
                    }
                ]
            }
        )
    with pytest.raises(ValueError, match="bad pattern"):
        parse_fingerprints(
            {
                "product": [
                    {
                        "id": "x",
                        "name": "X",
                        "role": "pacs_viewer",
                        "status": "guess",
                        "source": "s",
                        "match": [{"model": "("}],
                    }
                ]
            }
        )
