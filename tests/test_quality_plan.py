"""The quality table's plan: which rows one command runs, so the table can be spread over sessions."""

from benchmarks.quality import CURVE_KEEPS, METHODS, TABLE_KEEPS, planned_rows, row_key


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
