"""The quality table's plan: which rows one command runs, so the table can be spread over sessions
(and machines)."""

import json

import torch

import benchmarks.quality as quality
from benchmarks.baselines import layer_drop_masks
from benchmarks.quality import (
    CURVE_KEEPS,
    METHODS,
    PLOT_STYLE,
    TABLE_KEEPS,
    markdown_table,
    planned_rows,
    plot,
    recipe_changes,
    row_key,
)
from prune_engine.latency import machine_description


def test_the_whole_table_is_every_method_at_half_and_a_third_and_l0_alone_on_the_curve():
    keys = [row_key(*spec) for spec in planned_rows(["scifact"], list(METHODS), None, [42, 1])]
    assert len(keys) == len(set(keys))
    assert keys[:2] == ["scifact/unpruned/all/seed42", "scifact/unpruned/all/seed1"]
    for keep in (round(k * 100) for k in TABLE_KEEPS):
        assert f"scifact/layer_drop/keep{keep}" in keys  # untrained: one row, no seeds
        for method in ("l0", "layer_drop_distilled", "importance"):
            assert {f"scifact/{method}/keep{keep}/seed{s}" for s in (42, 1)} <= set(keys)
    curve = [k for k in keys if any(f"/keep{round(c * 100)}" in k for c in CURVE_KEEPS)]
    assert sorted(curve) == sorted(f"scifact/l0/keep{round(c * 100)}/seed{s}" for c in CURVE_KEEPS for s in (42, 1))
    assert len(keys) == 2 + len(TABLE_KEEPS) * (1 + 3 * 2) + len(CURVE_KEEPS) * 2


def test_targets_given_run_exactly_those_rows():
    specs = planned_rows(["trec"], ["l0", "layer_drop"], [0.75], [1])
    assert specs == [("trec", "l0", 0.75, 1), ("trec", "layer_drop", 0.75, None)]
    assert planned_rows(["trec", "scifact"], ["unpruned"], [0.5], [42]) == [("trec", "unpruned", 1.0, 42), ("scifact", "unpruned", 1.0, 42)]


def test_the_plot_draws_each_method_in_one_colour_as_retained_percent_with_the_seed_range(tmp_path):
    original = {"encoder_parameters": 100, "measured_speedup": 1.0, "stsb": 80.0, "scifact": 50.0, "trec": 40.0}
    def row(params, stsb, scifact, trec):
        return {"encoder_parameters": params, "measured_speedup": 2.0, "stsb": stsb, "scifact": scifact, "trec": trec}
    rows = {"original": original,
            "trec/l0/keep50/seed42": row(50, 78.0, 45.0, 38.0), "trec/l0/keep50/seed1": row(50, 82.0, 47.0, 38.0),
            "trec/l0/keep33/seed42": row(33, 72.0, 40.0, 36.0),
            "trec/layer_drop/keep50": row(50, 60.0, 30.0, 30.0),
            "scifact/layer_drop/keep50": row(50, 60.0, 30.0, 30.0)}  # a panel row without L0
    figure = plot(rows, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    stsb_axis = figure.axes[3]  # documents sorted: scifact's row first, trec's second
    l0 = next(c for c in stsb_axis.containers if c.get_label() == PLOT_STYLE["l0"][0])
    x, y = l0.lines[0].get_data()
    assert list(x) == [0.33, 0.5] and list(y) == [90.0, 100.0]  # 72/80, mean(78, 82)/80
    bar = l0.lines[2][0].get_segments()[1]  # the error bar at half: half the seeds' spread, 2.5%
    assert [round(v, 6) for _, v in bar] == [97.5, 102.5]
    colours = {}
    for axis in figure.axes:
        for line in axis.containers:
            colours.setdefault(line.get_label(), set()).add(line.lines[0].get_color())
    assert sorted(colours) == sorted([PLOT_STYLE["l0"][0], PLOT_STYLE["layer_drop"][0]])
    assert all(len(c) == 1 for c in colours.values()) and colours[PLOT_STYLE["l0"][0]] != colours[PLOT_STYLE["layer_drop"][0]]


def test_a_finished_run_of_another_recipe_is_named_not_reused():
    saved = {"seed": 42, "loss": {"task": 0.03, "distill_tokens": 1.0}, "mask_fraction": 0.5}
    assert recipe_changes(saved, {**saved, "gate_init": "auto"}) == []  # a key the run predates: not on record
    changed = {**saved, "loss": {"task": 0.1, "distill_tokens": 1.0}, "mask_fraction": 0.3}
    assert sorted(recipe_changes(saved, changed)) == ["loss.task: 0.03 then, 0.1 now", "mask_fraction: 0.5 then, 0.3 now"]


def test_a_row_trained_on_a_gpu_gets_its_speedup_measured_on_this_cpu_from_its_final_masks(tmp_path, monkeypatch):
    scorer = quality.Scorer()
    masks = layer_drop_masks(scorer.original.config, [0, 2, 4])
    masks.heads[2][:4] = False  # layer 2 keeps 8 of its 12 heads
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "final_masks.json").write_text(json.dumps(masks.as_dict()))
    monkeypatch.setattr(quality, "ROOT", tmp_path)
    timed = []
    monkeypatch.setattr(quality, "measured_speedup", lambda original, pruned, texts: timed.append(pruned) or 2.5)
    row = {"encoder_parameters": 5, "machine": "NVIDIA H200", "stsb": 80.0, "run_dir": "run"}

    measured = scorer.remeasure_speedup("trec/l0/keep50/seed42", row)
    assert measured == {**row, "measured_speedup": 2.5, "speedup_machine": machine_description(torch.device("cpu"))}
    assert timed[0].config.heads_per_layer == [12, 8, 12]  # the run's structure, timed with the original's weights
    scorer.remeasure_speedup("trec/layer_drop/keep33", {"run_dir": None})  # untrained: its evenly spaced layers
    assert timed[1].config.num_hidden_layers == 2

    original = {"encoder_parameters": 10, "stsb": 80.0, "measured_speedup": 1.0, "machine": "AMD EPYC, 2 cores"}
    table = markdown_table({"original": original, "trec/l0/keep50/seed42": row})
    assert table.splitlines()[-1].endswith("| 80.00 (100.0%) | – | – | – | – | – | – | NVIDIA H200 |")  # no speedup yet
