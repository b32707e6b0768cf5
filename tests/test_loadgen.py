"""`bertrt loadgen` with MLPerf LoadGen itself: scenarios end VALID on short runs (LoadGen's own
min_duration / min_query_count), accuracy mode scores what LoadGen logged, bad input fails first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bertrt.cli import main
from bertrt.errors import InputError
from bertrt.loadgen import accuracy, load_dataset
from bertrt.loadgen.runner import RunConfig
from bertrt.loadgen.texts import DEFAULT_PATH

from .conftest import TINY_LABELS, make_tiny_checkpoint
from .serving_helpers import LiveServer

# Short runs that LoadGen still judges: Server and SingleStream need enough queries for early
# stopping at the 90th percentile (44 and 64 here); the bound is loose for a shared 2-core machine.
SHORT = ["--min-duration-ms", "300", "--min-query-count", "64", "--latency-percentile", "0.9",
         "--latency-bound-ms", "3000", "--target-qps", "12", "--batch-size", "8"]


@pytest.fixture(scope="module")
def short_texts(tmp_path_factory) -> Path:
    """The first 64 lines of the bundled dataset, cut to 6..17 words (short queries keep the runs short)."""
    lines = [json.loads(line)["text"] for line in DEFAULT_PATH.read_text().splitlines()[:64]]
    path = tmp_path_factory.mktemp("loadgen") / "short.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(t.split()[:6 + i % 12])}) + "\n"
                            for i, t in enumerate(lines)))
    return path


def _run(out: Path, *args: str) -> dict:
    assert main(["loadgen", "--out", str(out), *args]) == 0
    return json.loads((out / "loadgen.json").read_text())


def test_bundled_dataset_is_512_lines_of_16_to_128_tokens(minilm_dir):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    texts = load_dataset(DEFAULT_PATH, "embed").texts
    lengths = [len(tokenizer.encode(t).ids) for t in texts]
    assert len(texts) == 512 == len(set(texts))
    assert min(lengths) >= 16 and max(lengths) <= 128 and 50 < sum(lengths) / len(lengths) < 95


def test_minilm_offline_server_singlestream_valid(tmp_path, short_texts):
    report = _run(tmp_path, "--dataset", str(short_texts), "--scenario", "Offline,Server,SingleStream", *SHORT)
    assert [r["scenario"] for r in report["runs"]] == ["Offline", "Server", "SingleStream"]
    for run in report["runs"]:
        summary = (Path(run["out"]) / "mlperf_log_summary.txt").read_text()
        assert "Result is : VALID" in summary, summary
        assert (Path(run["out"]) / "mlperf_log_detail.txt").stat().st_size > 0
        assert run["latency_ms"]["p90"] > 0
    assert report["runs"][0]["metric"]["samples_per_s"] > 0
    assert report["runs"][1]["metric"]["target_qps"] == 12
    assert (tmp_path / "loadgen.png").stat().st_size > 10_000


def test_find_peak_reports_the_highest_valid_target(tmp_path, short_texts, tiny_model_dirs):
    report = _run(tmp_path, "--model", str(tiny_model_dirs["embed"]), "--dataset", str(short_texts), "--scenario",
                  "Server", "--find-peak", "--max-tries", "2", *SHORT)
    run = report["runs"][0]
    assert [t["target_qps"] for t in run["tries"]] == pytest.approx([12, 18])
    valid = [t["target_qps"] for t in run["tries"] if t["result"] == "VALID"]
    assert run["peak_qps"] == (max(valid) if valid else None)
    if valid:
        assert "Result is : VALID" in (tmp_path / "mlperf_log_summary.txt").read_text()


def _squad(path: Path, contexts: list[str], questions: list[list[str]], golds: list[list[str]]) -> Path:
    paragraphs, k = [], 0
    for context, qs in zip(contexts, questions):
        qas = []
        for q in qs:
            qas.append({"id": f"q{k}", "question": q, "answers": [{"text": golds[k][0], "answer_start": 0}]})
            k += 1
        paragraphs.append({"context": context, "qas": qas})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


def test_qa_accuracy_equals_engine_qa_f1(tmp_path):
    import bertrt

    model = make_tiny_checkpoint(tmp_path / "qa", "qa", seed=3, max_position=128)
    contexts = ["The bridge was built in 1932 by the river authority after a long winter of floods.",
                "Paris is the capital of France and its largest city, on the Seine.",
                "Seven engineers met in a small hall to draw the first plans of the new engine."]
    questions = [["When was the bridge built?", "Who built the bridge?"], ["What is the capital of France?"],
                 ["How many engineers met?", "Where did they meet?"]]
    flat = [(c, q) for c, qs in zip(contexts, questions) for q in qs]
    engine = bertrt.load(model, task="qa", dtype="float32")
    predicted = [engine.qa(q, c)["answer"] for c, q in flat]
    # Half the gold answers are what the model says, so F1 is neither 0 nor 100 by construction.
    golds = [[p] if i % 2 == 0 else [c.split()[1]] for i, (p, (c, _)) in enumerate(zip(predicted, flat))]
    data = _squad(tmp_path / "squad.json", contexts, questions, golds)
    expected = accuracy.squad_scores(predicted, golds)
    report = _run(tmp_path / "out", "--model", str(model), "--task", "qa", "--dataset", str(data),
                  "--mode", "accuracy", "--scenario", "Offline", "--dtype", "float32", "--min-duration-ms", "100")
    got = report["runs"][0]["accuracy"]
    assert got["count"] == len(flat)
    assert got["f1"] == pytest.approx(expected["f1"]) and got["exact_match"] == pytest.approx(expected["exact_match"])
    assert 0 < got["f1"] < 100


def test_classify_and_embed_accuracy(tmp_path, tiny_model_dirs):
    import bertrt

    texts = [f"sample number {i} says {'good' if i % 3 else 'bad'} things" for i in range(11)]
    engine = bertrt.load(tiny_model_dirs["classify"], dtype="float32")
    names = [r["label"] for r in engine.classify(texts)]
    golds = [n if i % 4 else TINY_LABELS["classify"][(TINY_LABELS["classify"].index(n) + 1) % 3]
             for i, n in enumerate(names)]
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": g}) + "\n" for t, g in zip(texts, golds)))
    report = _run(tmp_path / "c", "--model", str(tiny_model_dirs["classify"]), "--task", "classify", "--dataset",
                  str(data), "--mode", "accuracy", "--dtype", "float32", "--min-duration-ms", "100")
    expected = sum(n == g for n, g in zip(names, golds)) / len(texts)
    assert report["runs"][0]["accuracy"]["accuracy"] == pytest.approx(expected) and expected < 1
    report = _run(tmp_path / "e", "--model", str(tiny_model_dirs["embed"]), "--dataset", str(data), "--mode",
                  "accuracy", "--dtype", "float32", "--scenario", "MultiStream", "--samples-per-query", "3",
                  "--min-duration-ms", "100")
    assert report["runs"][0]["accuracy"]["cosine_min"] > 0.99999


def test_network_sut_against_bertrt_serve(tmp_path, tiny_model_dirs, short_texts):
    import bertrt

    engine = bertrt.load(tiny_model_dirs["embed"], dtype="float32")
    with LiveServer(engine) as server:
        report = _run(tmp_path, "--url", server.url, "--dataset", str(short_texts), "--scenario", "Offline",
                      "--model", str(tiny_model_dirs["embed"]), "--mode", "accuracy", "--min-duration-ms", "100")
    run = report["runs"][0]
    assert run["sut"] == "http-test-model" and run["accuracy"]["count"] == 64
    assert run["accuracy"]["cosine_min"] > 0.9999


@pytest.mark.parametrize("args, message", [
    (["--dataset", "/nonexistent/file.jsonl"], "does not exist"),
    (["--scenario", "Bursty"], "unknown scenario"),
    (["--scenario", "Server", "--target-qps", "0"], "target-qps must be > 0"),
    (["--scenario", "Server", "--target-qps", "-3"], "target-qps must be > 0"),
    (["--task", "qa"], "invalid JSON"),
])
def test_bad_input_fails_before_loadgen(tmp_path, capsys, short_texts, args, message):
    base = {"--dataset": str(short_texts)}
    argv = ["loadgen", "--out", str(tmp_path / "out")]
    given = dict(zip(args[::2], args[1::2]))
    for key, value in {**base, **given}.items():
        argv += [key, value]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing ran


def test_malformed_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "no text field"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: .*'text'"):
        load_dataset(bad, "embed")
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(InputError, match="invalid JSON"):
        load_dataset(bad, "classify")
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"version": "1.1"}))
    with pytest.raises(InputError, match="'data' list"):
        load_dataset(squad, "qa")
    squad.write_text(json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"question": 3}]}]}]}))
    with pytest.raises(InputError, match="question"):
        load_dataset(squad, "qa")
    with pytest.raises(InputError, match="latency percentile"):
        RunConfig(latency_percentile=1.5).validated()


def test_squad_metric_normalization():
    assert accuracy.exact_match("The  Eiffel Tower!", "eiffel tower") == 1.0
    assert accuracy.f1("in the year 1932", "1932") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert accuracy.squad_scores(["a", "Paris"], [["x", "A"], ["London"]]) == {
        "exact_match": 50.0, "f1": 50.0, "count": 2}
