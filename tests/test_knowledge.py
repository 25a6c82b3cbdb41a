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
