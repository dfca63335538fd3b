"""Benchmark (issue 9, item 1): recorded keys and units, ratios from the recorded times, the plot, skipped
optional contenders, per-run memory, failures recorded instead of aborting. Tiny phantoms and fast contenders
only: our gland-driven rigid and the SimpleITK reference with few iterations."""

import functools
import json
import time

import numpy as np
import pytest
from matplotlib.image import imread

from MRITRUSFusionLib import bench
from MRITRUSFusionLib.errors import InputError, OutputExistsError

FAST_REFERENCE = bench.SimpleITKBSplineOptions(affine_iterations=10, bspline_iterations=5)
OURS = "classical-rigid-gland"


def fast_contenders() -> dict:
    contenders = bench.default_contenders(reference_options=FAST_REFERENCE)
    return {OURS: contenders[OURS], bench.REFERENCE: contenders[bench.REFERENCE],
            "missing-toolkit": bench.Unavailable("missing-toolkit not installed"),
            "broken": functools.partial(bench.classical, method="no-such-method", gland_driven=True)}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """One benchmark on one 40³ phantom, a two-size scaling curve, written as JSON and PNG."""
    result = bench.run_benchmark(bench.phantom_cases(1, seed=0, size=40), fast_contenders())
    scaling = bench.scaling_curve(sizes=(40, 48), contenders={OURS: fast_contenders()[OURS]})
    folder = tmp_path_factory.mktemp("bench")
    paths = bench.write_bench(result, folder / "bench.json", folder / "bench.png", overwrite=False, scaling=scaling)
    return {"result": result, "scaling": scaling, "json": json.loads(paths["json"].read_text()),
            "png": paths["png"], "folder": folder}


def test_json_has_environment_runs_summaries_and_units(outputs):
    data = outputs["json"]
    environment = data["environment"]
    for key in ("cpu_count", "torch_threads", "simpleitk_threads", "device", "simpleitk", "torch", "platform"):
        assert key in environment
    assert environment["device"] == "cpu" and environment["cpu_count"] >= 1
    assert data["reference"] == bench.REFERENCE
    assert data["cases"][0]["tre_before_mm"] > 0 and 0 <= data["cases"][0]["dice_before"] <= 1
    for name in (OURS, bench.REFERENCE):
        run = data["contenders"][name]["runs"][0]
        for key in ("time_s", "times_s", "peak_rss_mib", "baseline_rss_mib", "tre_mean_mm", "dice"):
            assert key in run, (name, key)
        summary = data["contenders"][name]["summary"]
        for key in ("time_s", "peak_rss_mib", "tre_mean_mm", "dice", "time_ratio_vs_simpleitk",
                    "tre_ratio_vs_simpleitk", "n_cases"):
            assert key in summary, (name, key)
        assert summary["n_cases"] == 1
    scaling = data["scaling"]
    assert scaling["sizes"] == [40, 48]
    runs = scaling["contenders"][OURS]["runs"]
    assert [run["size"] for run in runs] == [40, 48]
    assert runs[0]["spacing_mm"] == pytest.approx(76.8 / 40)
    assert all(run["time_s"] > 0 and run["peak_rss_mib"] > 0 for run in runs)


def test_ratios_are_reference_over_contender_of_recorded_values(outputs):
    contenders = outputs["json"]["contenders"]
    ours, reference = contenders[OURS]["summary"], contenders[bench.REFERENCE]["summary"]
    assert ours["time_s"] == pytest.approx(contenders[OURS]["runs"][0]["time_s"])
    assert ours["time_ratio_vs_simpleitk"] == pytest.approx(reference["time_s"] / ours["time_s"])
    assert ours["tre_ratio_vs_simpleitk"] == pytest.approx(reference["tre_mean_mm"] / ours["tre_mean_mm"])
    assert reference["time_ratio_vs_simpleitk"] == pytest.approx(1.0)


def test_our_gland_driven_rigid_is_accurate(outputs):
    run = outputs["json"]["contenders"][OURS]["runs"][0]
    assert run["tre_mean_mm"] < outputs["json"]["cases"][0]["tre_before_mm"]
    assert run["dice"] > 0.9


def test_peak_rss_is_measured_per_run(outputs):
    for name in (OURS, bench.REFERENCE):
        run = outputs["json"]["contenders"][name]["runs"][0]
        assert run["peak_rss_mib"] > 0
        assert run["peak_rss_mib"] >= run["baseline_rss_mib"] > 0
        # the child's own memory, not the parent's (which holds torch, matplotlib and the cases)
        assert run["peak_rss_mib"] < 2048


def test_skipped_and_failed_contenders_are_recorded(outputs):
    contenders = outputs["json"]["contenders"]
    assert contenders["missing-toolkit"] == {"skipped": "missing-toolkit not installed"}
    broken = contenders["broken"]
    assert "no-such-method" in broken["runs"][0]["error"]
    assert broken["summary"]["n_cases"] == 0 and broken["summary"]["n_failed"] == 1
    assert broken["summary"]["time_ratio_vs_simpleitk"] is None


def test_optional_toolkits_are_unavailable_without_their_package():
    entry = bench._optional("no_such_module_for_bench", "no-such-package", bench.ants_syn)
    assert entry == bench.Unavailable("no-such-package not installed")
    assert bench.measure(entry, None, None, None, None) == {"skipped": "no-such-package not installed"}
    names = set(bench.default_contenders())
    assert {f"classical-{m}-{mode}" for m in ("rigid", "affine", "bspline") for mode in ("gland", "image")} <= names
    assert {bench.REFERENCE, "ants-syn", "elastix-bspline"} <= names


def test_png_is_readable(outputs):
    image = imread(outputs["png"])
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
    assert float(np.std(image[..., :3])) > 0.01


def test_markdown_table(outputs):
    table = bench.format_table({**outputs["result"], "scaling": outputs["scaling"]})
    assert "| contender | time (s) |" in table
    assert f"| {OURS} |" in table and f"| {bench.REFERENCE} |" in table
    assert "skipped: missing-toolkit not installed" in table
    assert "40³" in table and "48³" in table


def test_existing_outputs_are_kept_without_overwrite(outputs):
    json_path = outputs["folder"] / "bench.json"
    before = json_path.read_bytes()
    with pytest.raises(OutputExistsError):
        bench.write_bench(outputs["result"], json_path, outputs["folder"] / "new.png")
    assert json_path.read_bytes() == before
    assert not (outputs["folder"] / "new.png").exists()


def test_timeout_is_an_error_not_a_hang():
    case = bench.phantom_cases(1, size=32)[0]
    report = bench.measure(fast_contenders()[OURS], case.fixed, case.moving, case.fixed_mask, case.moving_mask,
                           timeout_s=0.01)
    assert report["error"].startswith("timed out") and report["killed"]


def test_unpicklable_contender_and_missing_case_names_are_input_errors():
    case = bench.phantom_cases(1, size=32)[0]
    with pytest.raises(InputError, match="cannot be sent"):
        bench.measure(lambda *images: None, case.fixed, case.moving, None, None)
    with pytest.raises(InputError, match="name the cases"):
        bench.dataset_cases("/nonexistent", [])
    assert bench.scaling_curve(quick=True, contenders={})["sizes"] == [32, 48]
    assert bench.scaling_curve(max_size=128, contenders={})["sizes"] == [64, 128]


def test_training_throughput_comes_from_the_trainer_loop():
    """samples/s of a real training run: at least samples over the whole call's wall time (which adds setup)."""
    start = time.perf_counter()
    speed = bench.training_throughput("ecmca-lstm", size=16, steps=2, batch_size=2)
    elapsed = time.perf_counter() - start
    assert speed["model"] == "ecmca-lstm" and speed["size"] == 16 and speed["threads"] >= 1
    assert 2 * 2 / elapsed <= speed["samples_per_s"] < float("inf")


def test_learned_contenders_are_also_timed_warm():
    """A second call in the child process skips importing torch and reading the weights: it is faster than the
    cold call, and the warm time reaches the run record, the summary and the table."""
    contender = bench.learned_contenders().get("learned-globalnet")
    if contender is None:
        pytest.skip("no bundled globalnet weights")
    case = bench.phantom_cases(1, size=32)[0]
    report = bench.measure(contender, case.fixed, case.moving, None, None, warm=True)
    assert 0 < report["warm_time_s"] < report["time_s"]
    record = bench._run_record(case, [report])
    assert record["warm_time_s"] == report["warm_time_s"]
    summary = bench._summary([record])
    assert summary["warm_time_s"] == pytest.approx(report["warm_time_s"])
    table = bench.format_table({"contenders": {"learned-globalnet": {"summary": summary}}})
    assert f"| learned-globalnet | {bench._number(summary['time_s'])} | {bench._number(summary['warm_time_s'])} |" in table
    cold = bench.measure(contender, case.fixed, case.moving, None, None)
    assert "warm_time_s" not in cold
