"""Taxonomy presets match the benchmarks; user files are validated with precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session

from safereview.db.collections import ensure_collection, ensure_taxonomy
from safereview.db.taxonomy import (
    TaxonomyError,
    category_names,
    dimension,
    dimension_names,
    load_file,
    preset,
    resolve,
    task_type_ids,
)


def test_uni_safebench_preset_matches_the_paper() -> None:
    spec = preset("uni-safebench")
    assert len(spec["task_types"]) == 7
    assert len(spec["categories"]) == 6
    assert sum(len(c["subcategories"]) for c in spec["categories"]) == 16
    assert dimension_names(spec) == ["contextual", "intrinsic"]
    assert set(dimension(spec, "contextual")["labels"]) == {"unsafe", "safe", "refusal"}
    assert set(dimension(spec, "intrinsic")["labels"]) == {"unsafe", "safe"}
    assert "composite-unsafe" in task_type_ids(spec)
    assert "Psychological Manipulation" in category_names(spec)


def test_vlsu_preset_matches_the_paper() -> None:
    spec = preset("vlsu")
    assert len(spec["categories"]) == 15
    assert dimension_names(spec) == ["image", "text", "joint"]
    for dim in spec["dimensions"]:
        assert dim["labels"] == ["safe", "borderline", "unsafe"]
        assert dim["ordered"] is True
    assert spec["categories"][8] == {"id": "C9", "name": "Interpersonal Violence", "subcategories": []}


def test_toml_and_yaml_files_load(tmp_path: Path) -> None:
    toml = tmp_path / "audio.toml"
    toml.write_text(
        'name = "audio-safety"\n'
        'task_types = ["Speech to text",\n'
        '  {id = "tts", name = "Text to speech", inputs = ["text"], outputs = ["audio"]}]\n'
        'categories = [{name = "Harassment", subcategories = ["Threats", "Insults"]}, "Fraud"]\n'
        '[[dimensions]]\nname = "severity"\nlabels = ["none", "mild", "severe"]\nordered = true\n',
        encoding="utf-8",
    )
    spec = load_file(toml)
    assert task_type_ids(spec) == ["speech-to-text", "tts"]
    assert category_names(spec) == ["Threats", "Insults", "Fraud"]
    assert dimension(spec, "severity")["unsafe_labels"] == ["severe"]

    yml = tmp_path / "t.yaml"
    yml.write_text("name: t\ndimensions:\n  - name: ok\n    labels: [yes, no]\n", encoding="utf-8")
    # YAML 1.1 reads bare yes/no as booleans: the validator must say so, not store True/False.
    with pytest.raises(TaxonomyError, match=r"t\.yaml: dimensions\[0\]\.labels"):
        load_file(yml)
    yml.write_text("name: t\ndimensions:\n  - name: ok\n    labels: ['yes', 'no']\n", encoding="utf-8")
    assert dimension_names(load_file(yml)) == ["ok"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('name = ""\n[[dimensions]]\nname="d"\nlabels=["a","b"]\n', "name"),
        ('name = "x"\n', "dimensions"),
        ('name = "x"\n[[dimensions]]\nname="d"\nlabels=["a"]\n', r"dimensions\[0\]\.labels"),
        ('name = "x"\n[[dimensions]]\nname="d"\nlabels=["a","a"]\n', r"dimensions\[0\]\.labels"),
        (
            'name = "x"\n[[dimensions]]\nname="d"\nlabels=["a","b"]\nunsafe_labels=["c"]\n',
            r"dimensions\[0\]\.unsafe_labels",
        ),
        (
            'name = "x"\ntask_types=[{id="t", inputs=["smell"]}]\n[[dimensions]]\nname="d"\nlabels=["a","b"]\n',
            r"task_types\[0\]\.inputs",
        ),
        ('name = "x"\ncategories=["A","A"]\n[[dimensions]]\nname="d"\nlabels=["a","b"]\n', "categories"),
        ('name = "x"\n[[dimensions]]\nname="bad name!"\nlabels=["a","b"]\n', r"dimensions\[0\]\.name"),
        ("name = [unclosed\n", "not valid TOML"),
    ],
)
def test_invalid_files_name_file_and_field(tmp_path: Path, body: str, field: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(TaxonomyError, match=rf"bad\.toml: {field}"):
        load_file(path)


def test_unknown_preset_and_extension(tmp_path: Path) -> None:
    with pytest.raises(TaxonomyError, match="cannot read"):
        resolve("no-such-preset")
    other = tmp_path / "t.json"
    other.write_text("{}", encoding="utf-8")
    with pytest.raises(TaxonomyError, match="must end in"):
        load_file(other)


def test_taxonomy_stored_once_and_never_silently_redefined(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        a = ensure_taxonomy(s, "vlsu")
        b = ensure_taxonomy(s, "vlsu")
        assert a.id == b.id
        changed = preset("vlsu")
        changed["dimensions"][0]["help"] = "redefined"
        with pytest.raises(ValueError, match="different definition"):
            ensure_taxonomy(s, changed)
        col = ensure_collection(s, "demo / vlsu", "vlsu", overlap_target=3)
        assert col.overlap_target == 3 and col.blind is True
        with pytest.raises(ValueError, match="another taxonomy"):
            ensure_collection(s, "demo / vlsu", "uni-safebench")
