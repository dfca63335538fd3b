"""Point lists: Slicer markups .mrk.json and label,x,y,z CSV, in LPS mm."""

import csv
import json

import numpy as np
import pytest

from MRITRUSFusionLib.errors import InputError, OutputExistsError
from MRITRUSFusionLib.io import read_points, write_points

POINTS = np.random.default_rng(0).uniform(-150, 150, (5, 3))
LABELS = ["apex", "base", "lesion 1, centre", 'quote "q"', "5"]


@pytest.mark.parametrize("suffix", [".mrk.json", ".csv"])
def test_points_round_trip_exactly(tmp_path, suffix):
    points, labels = read_points(write_points(POINTS, LABELS, tmp_path / f"p{suffix}"))
    assert points.dtype == np.float64 and points.shape == (5, 3)
    np.testing.assert_array_equal(points, POINTS)
    assert labels == LABELS


def test_markups_file_follows_slicer_schema(tmp_path):
    document = json.loads(write_points(POINTS, LABELS, tmp_path / "p.mrk.json").read_text())
    assert document["@schema"].endswith("markups-schema-v1.0.3.json#")
    (markup,) = document["markups"]
    assert (markup["type"], markup["coordinateSystem"], markup["coordinateUnits"]) == ("Fiducial", "LPS", "mm")
    assert [p["label"] for p in markup["controlPoints"]] == LABELS
    assert {p["positionStatus"] for p in markup["controlPoints"]} == {"defined"}
    assert len({p["id"] for p in markup["controlPoints"]}) == 5
    np.testing.assert_array_equal([p["position"] for p in markup["controlPoints"]], POINTS)


def test_csv_file_has_label_x_y_z_columns(tmp_path):
    with write_points(POINTS, LABELS, tmp_path / "p.csv").open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["label", "x", "y", "z"]
    assert rows[3][0] == "lesion 1, centre" and float(rows[3][2]) == POINTS[2, 1]


def test_ras_markups_are_read_as_lps(tmp_path):
    path = tmp_path / "ras.mrk.json"
    path.write_text(json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": [
        {"label": "F-1", "position": [10.0, -20.5, 30.25]}, {"label": "F-2", "position": [-1.0, 2.0, -3.0]}]}]}))
    points, labels = read_points(path)
    np.testing.assert_array_equal(points, [[-10.0, 20.5, 30.25], [1.0, -2.0, -3.0]])
    assert labels == ["F-1", "F-2"]


def test_points_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_points(tmp_path / "absent.csv")
    with pytest.raises(InputError, match="unknown point format"):
        read_points(tmp_path / "p.fcsv")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("name,x,y\na,1,2\n")
    with pytest.raises(InputError, match="missing column"):
        read_points(bad_csv)
    bad_number = tmp_path / "number.csv"
    bad_number.write_text("label,x,y,z\na,1,2,3\nb,1,two,3\n")
    with pytest.raises(InputError, match="line 3"):
        read_points(bad_number)
    undefined = tmp_path / "undefined.mrk.json"
    undefined.write_text(json.dumps({"markups": [{"controlPoints": [
        {"label": "T1", "position": [0, 0, 0], "positionStatus": "undefined"}]}]}))
    with pytest.raises(InputError, match="'T1' has no defined position"):
        read_points(undefined)
    with pytest.raises(InputError, match="3 points but 2 labels"):
        write_points(POINTS[:3], LABELS[:2], tmp_path / "p.csv")
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        write_points(POINTS[:, :2], LABELS, tmp_path / "p.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "number.csv", "undefined.mrk.json"]


def test_points_overwrite_false(tmp_path):
    path = write_points(POINTS, LABELS, tmp_path / "p.csv")
    with pytest.raises(OutputExistsError):
        write_points(POINTS * 2, LABELS, path, overwrite=False)
    np.testing.assert_array_equal(read_points(path)[0], POINTS)
