"""Outputs speak the dataset's language: its ids and names in evaluate's table and metrics.json, its names for ignored values."""

import csv
import json

import numpy as np

from fcn import config as config_lib
from fcn import data, evaluate, metrics, visualize
from fcn.datasets import ade20k
from fcn.datasets.classes import ClassTable

FOLDER_CSV = "id,name,r,g,b,ignore\n0,unlabelled,0,0,0,1\n10,road,128,64,128,0\n20,car,0,0,142,0\n30,tree,0,128,0,0\n40,boat,0,0,255,0\n"


def folder_table(tmp_path):
    path = tmp_path / "classes.csv"
    path.write_text(FOLDER_CSV)
    return ClassTable.read_csv(str(path))


def folder_result(classes):
    # Rows: ground truth, columns: prediction, by train id (road 0, car 1, tree 2, boat 3).
    # Road and car are in the ground truth, tree only predicted, boat nowhere.
    matrix = np.array([[6, 1, 1, 0], [0, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.int64)
    scores = metrics.scores(matrix, classes.names)
    return evaluate.EvaluationResult(scores, matrix, 2, data.SkipReport(), classes=classes)


def test_evaluate_table_lists_present_classes_under_their_own_ids(tmp_path):
    text = evaluate.summary(folder_result(folder_table(tmp_path)))
    rows = [line.split() for line in text.splitlines()[1:4]]
    # IoU road 6 / (8 + 6 - 6) = 75 %, car 3 / (3 + 4 - 3) = 75 %, tree 0 / 1 = 0 %; accuracy 6/8, 3/3, undefined.
    assert rows == [["10", "road", "75.00", "75.00"], ["20", "car", "75.00", "100.00"], ["30", "tree", "0.00", "-"]]
    assert text.splitlines()[4] == "(1 more classes, absent from both the ground truth and the predictions)"
    assert "boat" not in text


def test_metrics_json_carries_the_class_tables_ids_and_names(tmp_path):
    written = evaluate.metrics_json(folder_result(folder_table(tmp_path)), config_lib.Config())
    assert written["classes"] == [
        {"id": 10, "name": "road", "iou": 0.75, "accuracy": 0.75, "ground_truth_pixels": 8, "predicted_pixels": 6},
        {"id": 20, "name": "car", "iou": 0.75, "accuracy": 1.0, "ground_truth_pixels": 3, "predicted_pixels": 4},
        {"id": 30, "name": "tree", "iou": 0.0, "accuracy": None, "ground_truth_pixels": 0, "predicted_pixels": 1},
    ]
    assert written["classes_not_present"] == 1
    json.dumps(written, allow_nan=False)


def test_the_users_name_for_ignored_values_is_kept(tmp_path):
    classes = folder_table(tmp_path)
    assert classes.ignore_name(0) == "unlabelled" and classes.ignore_name(255) == "ignored"
    run_csv = tmp_path / "run_classes.csv"
    classes.write_csv(str(run_csv))  # the run's classes.csv
    with open(run_csv, newline="") as f:
        rows = {int(row["id"]): row["name"] for row in csv.DictReader(f)}
    assert rows == {10: "road", 20: "car", 30: "tree", 40: "boat", 0: "unlabelled", 255: "ignored"}
    assert ClassTable.read_csv(str(run_csv)).ignore_name(0) == "unlabelled"
    assert ade20k.class_table().ignore_name(0) == "other"


def legend_labels(classes):
    label = np.array([[0, 1], [255, 255]], np.uint8)
    figure = visualize.comparison_figure([np.zeros((2, 2, 3), np.uint8)], [label], [label], classes=classes)
    return [text.get_text() for text in figure.legends[0].get_texts()]


def test_visualize_legend_names_ignored_pixels_as_the_dataset_does(tmp_path):
    assert legend_labels(folder_table(tmp_path)) == ["road", "car", "unlabelled (ignored)"]
    assert legend_labels(ade20k.class_table())[-1] == "other (ignored)"
    voc_like = ClassTable(("background", "cat"), (0, 1), ((0, 0, 0), (64, 0, 0)))
    assert legend_labels(voc_like)[-1] == "ignored"
