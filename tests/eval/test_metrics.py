"""Metrics, normalised columns, the report table and the trade-off plot (pure Python, no model)."""

from __future__ import annotations

import json

import pytest

from effreason.eval.metrics import SampleResult, average_normalised, budget_adherence, dataset_metrics, normalised, pass_at_1
from effreason.eval.plots import plot_tradeoff
from effreason.eval.report import build_report, format_table, read_report, settings_line, write_report


def sample(uid, correct, tokens, *, difficulty=None, finish="stop", index=0):
    return SampleResult(uid, difficulty, index, tokens, finish, correct)


def test_pass_at_1_weights_problems_equally():
    # problem a: 1 of 3 correct, problem b: 1 of 1 -> (1/3 + 1) / 2
    samples = [sample("a", True, 5), sample("a", False, 5, index=1), sample("a", False, 5, index=2), sample("b", True, 5)]
    assert pass_at_1(samples) == pytest.approx((1 / 3 + 1) / 2)


def test_dataset_metrics_and_difficulty_breakdown():
    samples = [
        sample("a", True, 10, difficulty=1),
        sample("a", False, 30, difficulty=1, finish="length", index=1),
        sample("b", True, 20, difficulty=2),
        sample("b", True, 40, difficulty=2, index=1),
    ]
    metrics = dataset_metrics(samples)
    assert metrics["num_problems"] == 2 and metrics["num_samples"] == 4
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["mean_tokens"] == pytest.approx(25.0)
    assert metrics["median_tokens"] == pytest.approx(25.0)
    assert metrics["truncation_rate"] == pytest.approx(0.25)
    assert metrics["by_difficulty"]["1"] == {"accuracy": 0.5, "mean_tokens": 20.0, "median_tokens": 20.0, "truncation_rate": 0.5}
    assert metrics["by_difficulty"]["2"]["accuracy"] == 1.0
    assert "budget" not in metrics


def test_no_difficulty_no_breakdown():
    assert "by_difficulty" not in dataset_metrics([sample("a", True, 3)])


def test_empty_samples_rejected():
    with pytest.raises(ValueError, match="samples"):
        dataset_metrics([])


def test_budget_adherence():
    samples = [sample("a", True, 40), sample("b", True, 60), sample("c", False, 100)]
    assert budget_adherence(samples, 50) == {"budget": 50, "within_budget": pytest.approx(1 / 3), "length_ratio": pytest.approx(4 / 3)}
    assert dataset_metrics(samples, prompt_budget=50)["budget"]["budget"] == 50


def test_normalised_is_100_times_ratio():
    model, baseline = {"accuracy": 0.9, "mean_tokens": 50.0}, {"accuracy": 0.95, "mean_tokens": 100.0}
    assert normalised(model, baseline) == {"accuracy_pct": pytest.approx(100 * 0.9 / 0.95), "tokens_pct": pytest.approx(50.0)}
    assert normalised(model, {"accuracy": 0.0, "mean_tokens": 100.0})["accuracy_pct"] is None
    average = average_normalised([{"accuracy_pct": 90.0, "tokens_pct": 50.0}, {"accuracy_pct": None, "tokens_pct": 70.0}])
    assert average == {"accuracy_pct": 90.0, "tokens_pct": 60.0}


def report_pair():
    model = {"toy": dataset_metrics([sample("a", True, 10, difficulty=2), sample("b", False, 20, difficulty=3)], prompt_budget=15)}
    base = {"toy": dataset_metrics([sample("a", True, 40, difficulty=2), sample("b", True, 40, difficulty=3)])}
    baseline = build_report("warm", {}, base)
    return build_report("tuned", {"n": 1}, model, baseline)


def test_report_with_baseline_and_table():
    report = report_pair()
    assert report["normalised"]["toy"] == {"accuracy_pct": pytest.approx(50.0), "tokens_pct": pytest.approx(37.5)}
    assert report["normalised"]["average"]["tokens_pct"] == pytest.approx(37.5)
    table = format_table(report)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["dataset", "problems", "samples"] and "tok norm" in lines[0]
    assert "base acc %" in lines[0] and "base tok" in lines[0]
    assert lines[1].split() == ["toy", "2", "2", "50.0", "15.0", "15.0", "0.0", "100.0", "40.0", "50.0", "37.5"]
    assert lines[2].split() == ["level", "2", "100.0", "10.0", "10.0", "0.0", "100.0", "40.0"]
    assert lines[4].split() == ["average", "50.0", "37.5"]
    assert "prompted budget 15 tokens: 50.0% of responses within it" in table


def test_settings_line_names_the_sampling():
    report = build_report("tuned", {"n": 3, "temperature": 0.6, "max_new_tokens": 32768, "seed": 0, "max_problems": None,
                                    "force_answer": False, "prompt_budget": 64}, {})
    assert settings_line(report) == ("tuned: 3 sample(s) per problem, temperature 0.6, at most 32768 new tokens, seed 0, "
                                     "every problem of a file, 200 of a generated dataset, prompted budget 64 tokens")
    greedy = build_report("m", {"n": 1, "temperature": 0, "max_new_tokens": 320, "seed": 0, "max_problems": 504}, {})
    assert "greedy, at most 320 new tokens, seed 0, at most 504 problems per dataset" in settings_line(greedy)


def test_report_without_shared_datasets_rejected():
    baseline = build_report("warm", {}, {"gsm8k": {"accuracy": 1.0, "mean_tokens": 1.0}})
    with pytest.raises(ValueError, match="none of the evaluated datasets"):
        build_report("tuned", {}, {"toy": {"accuracy": 1.0, "mean_tokens": 1.0}}, baseline)


def test_report_json_round_trip(tmp_path):
    report = report_pair()
    write_report(report, tmp_path / "sub" / "report.json")
    assert read_report(tmp_path / "sub" / "report.json") == json.loads(json.dumps(report))
    (tmp_path / "other.json").write_text("[1]")
    with pytest.raises(ValueError, match="not an evaluation report"):
        read_report(tmp_path / "other.json")
    with pytest.raises(ValueError, match="cannot read"):
        read_report(tmp_path / "absent.json")


def test_plot_tradeoff_writes_a_figure(tmp_path):
    points = [
        {"label": "warm start", "dataset": "toy", "accuracy": 0.9, "mean_tokens": 100.0},
        {"label": "alpha=0.1", "dataset": "toy", "accuracy": 0.88, "mean_tokens": 70.0},
        {"label": "alpha=0.1", "dataset": "gsm8k", "accuracy": 0.5, "mean_tokens": 300.0},
    ]
    plot_tradeoff(points, tmp_path / "plot.png", reference="warm start", title="sweep")
    assert (tmp_path / "plot.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="points"):
        plot_tradeoff([], tmp_path / "empty.png")
