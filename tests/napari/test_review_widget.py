"""Blinded clinician review: blinded display, linked pickers, save after every answer, resume, export."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from napari_plugin._layers import grid
from napari_plugin._review_store import CRITERIA_KEYS, ReviewStore, blinded_order
from napari_plugin._sample_data import CLEAN_NAME, NOISY_NAME


def _review_widget(viewer, path):
    _, widget = viewer.window.add_plugin_dock_widget("recon-workbench", "Clinician review")
    widget.file_picker.setText(str(path))
    widget.case_edit.setText("sub-01")
    widget.reviewer_edit.setText("Dr Test")
    return widget


def _add_third(viewer):
    from napari_plugin._layers import derived_kwargs

    clean = viewer.layers[CLEAN_NAME]
    return viewer.add_image((clean.data * 0.9).astype(np.float32), **derived_kwargs(clean, "smoothed result"))


def test_review_blinded_saved_after_each_answer_resumed_and_exported(make_napari_viewer, qtbot, tmp_path):
    path = tmp_path / "reviews" / "review.json"
    names = [NOISY_NAME, CLEAN_NAME, "smoothed result"]

    viewer = make_napari_viewer()
    viewer.open_sample("recon-workbench", "dwi_phantom")
    _add_third(viewer)
    widget = _review_widget(viewer, path)
    widget.set_checked(names)
    arrays = {n: viewer.layers[n].data for n in names}
    widget.start()
    assert not widget.status.is_error, widget.status.text()

    # blinded: A/B/C layers in a grid, in the seeded order, no source name in them; originals hidden
    data = json.loads(path.read_text())
    case = data["cases"]["sub-01"]
    assert case["candidates"] == sorted(names) and isinstance(case["seed"], int)
    order = blinded_order(names, case["seed"])
    assert set(widget.blind_layers) == {"A", "B", "C"}
    for label, name in zip("ABC", order):
        layer = widget.blind_layers[label]
        assert layer.name == f"Image {label}" and layer.data is arrays[name]
        assert layer.metadata == {"review_label": label}
    assert not any(n in viewer.layers for n in names)  # result names are out of sight while blinded
    # ... but the list still offers them (and no blinded copy), so the reviewer can go back to this case
    listed = [widget.candidates.item(i).text() for i in range(widget.candidates.count())]
    assert sorted(listed) == sorted(names)  # no blinded copy ("Image A") among them
    assert sorted(widget.checked_names()) == sorted(names)
    assert [layer.name for layer in viewer.layers if layer.visible] == ["Image A", "Image B", "Image C"]
    assert grid(viewer).enabled
    assert len({tuple(layer.contrast_limits) for layer in widget.blind_layers.values()}) == 1
    assert set(case) == {"seed", "candidates", "started", "updated", "scores"}  # no label -> name map on disk
    assert set(case["scores"]) == {"A", "B", "C"}

    # linked pickers: the panel's spin boxes drive every image, and follow the sliders
    widget.volume_spin.setValue(5)
    assert viewer.dims.current_step[0] == 5
    widget.slice_spin.setValue(3)
    assert viewer.dims.current_step[widget._slice_axis()] == 3 and widget._slice_axis() == 3
    viewer.dims.set_current_step(0, 7)
    assert widget.volume_spin.value() == 7

    # every answer is on disk at once (JSON and CSV, blinded)
    widget.groups[("A", "sharpness")].button(4).click()
    assert json.loads(path.read_text())["cases"]["sub-01"]["scores"]["A"]["sharpness"] == 4
    rows = list(csv.DictReader(path.with_suffix(".csv").open()))
    assert rows[0]["label"] == "A" and rows[0]["sharpness"] == "4" and "layer" not in rows[0]
    widget.groups[("B", "noise")].button(2).click()
    widget.comments["B"].setText("streaks in the posterior slices")
    saved = json.loads(path.read_text())["cases"]["sub-01"]["scores"]
    assert saved["B"]["noise"] == 2 and saved["B"]["comment"] == "streaks in the posterior slices"

    # closing napari mid-review loses nothing: a new viewer + the same file continues the case
    viewer.close()
    viewer2 = make_napari_viewer()
    viewer2.open_sample("recon-workbench", "dwi_phantom")
    _add_third(viewer2)
    widget2 = _review_widget(viewer2, path)
    widget2.set_checked(names)
    arrays2 = {n: viewer2.layers[n].data for n in names}
    widget2.start()
    assert widget2.groups[("A", "sharpness")].checkedId() == 4
    assert widget2.groups[("B", "noise")].checkedId() == 2
    assert widget2.comments["B"].text() == "streaks in the posterior slices"
    for name, layer in widget2.blind_layers.items():  # same seed, same blinded order
        assert layer.data is arrays2[order["ABC".index(name)]]

    for label in "ABC":
        for key in CRITERIA_KEYS:
            widget2.groups[(label, key)].button(3 if label != "A" else 5).click()
    assert ReviewStore(path).is_complete("sub-01")

    json_path, csv_path = widget2.export()
    un = json.loads(json_path.read_text())
    assert un["cases"]["sub-01"]["labels"] == dict(zip("ABC", order))
    assert un["cases"]["sub-01"]["scores"][order[0]]["sharpness"] == 5
    rows = list(csv.DictReader(csv_path.open()))
    assert {r["label"]: r["layer"] for r in rows} == dict(zip("ABC", order))
    assert un["reviewer"] == "Dr Test"

    widget2.end()
    assert not widget2.blind_layers and "Image A" not in viewer2.layers and not grid(viewer2).enabled
    assert all(n in viewer2.layers for n in names) and viewer2.layers[NOISY_NAME].visible  # results are back
    assert sorted(widget2.checked_names()) == sorted(names)


def test_review_refuses_other_results_for_the_same_case(make_napari_viewer, tmp_path):
    path = tmp_path / "review.json"
    store = ReviewStore(path)
    store.open_case("sub-01", ["x", "y"], seed=1)
    viewer = make_napari_viewer()
    viewer.open_sample("recon-workbench", "dwi_phantom")
    widget = _review_widget(viewer, path)
    widget.set_checked([NOISY_NAME, CLEAN_NAME])
    widget.start()
    assert widget.status.is_error and "other results" in widget.status.text()
    widget.set_checked([NOISY_NAME])
    widget.case_edit.setText("sub-02")
    widget.start()
    assert widget.status.is_error and "at least two" in widget.status.text()


def test_store_rejects_bad_scores(tmp_path):
    store = ReviewStore(tmp_path / "r.json")
    store.open_case("c", ["a", "b"], seed=3)
    with pytest.raises(ValueError):
        store.set_score("c", "A", "sharpness", 6)
    with pytest.raises(ValueError):
        store.set_score("c", "A", "colour", 3)
