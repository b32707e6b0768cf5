"""The bertrt command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def bertrt(*args, stdin: str | None = None, check: bool = True):
    result = subprocess.run([sys.executable, "-m", "bertrt", *args], input=stdin, capture_output=True, text=True,
                            timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"bertrt {args} failed ({result.returncode}): {result.stderr}")
    return result


def lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_embed_from_arguments_stdin_and_file(tiny_model_dirs, tmp_path):
    model = str(tiny_model_dirs["embed"])
    from_args = lines(bertrt("embed", "--model", model, "hello there", "second text"))
    assert [r["text"] for r in from_args] == ["hello there", "second text"]
    assert len(from_args[0]["embedding"]) == 48
    from_stdin = lines(bertrt("embed", "--model", model, stdin="hello there\n\nsecond text\n"))
    assert [r["text"] for r in from_stdin] == ["hello there", "second text"]
    assert from_stdin[0]["embedding"] == pytest.approx(from_args[0]["embedding"], abs=1e-6)
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"text": "hello there"}\n{"text": "second text", "id": 7}\n')
    from_file = lines(bertrt("embed", "--model", model, "--file", str(jsonl)))
    assert [r["text"] for r in from_file] == ["hello there", "second text"]


def test_bad_jsonl_line_is_named(tiny_model_dirs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "oops"}\n')
    result = bertrt("embed", "--model", str(tiny_model_dirs["embed"]), "--file", str(bad), check=False)
    assert result.returncode != 0 and "line 2" in result.stderr


def test_tasks(tiny_model_dirs):
    classified = lines(bertrt("classify", "--model", str(tiny_model_dirs["classify"]), "great movie"))
    assert classified[0]["label"] in ("negative", "positive", "neutral")
    entities = lines(bertrt("ner", "--model", str(tiny_model_dirs["ner"]), "--aggregation", "first",
                            "Angela Merkel lives in Berlin"))
    assert isinstance(entities[0]["entities"], list)
    answer = lines(bertrt("qa", "--model", str(tiny_model_dirs["qa"]), "Who built it?", "--context",
                          "Gustave Eiffel built the tower in Paris."))[0]
    assert answer["answer"] == "Gustave Eiffel built the tower in Paris."[answer["start"]:answer["end"]]


def test_wrong_task_is_a_clear_error(tiny_model_dirs):
    result = bertrt("classify", "--model", str(tiny_model_dirs["embed"]), "x", check=False)
    assert result.returncode == 2
    assert "needs a BertForSequenceClassification checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_model_is_a_clear_error(tmp_path):
    result = bertrt("embed", "--model", str(tmp_path / "absent"), "x", check=False)
    assert result.returncode == 2 and "model directory not found" in result.stderr


def test_info_reports_cpu_and_backends():
    report = json.loads(bertrt("info").stdout)
    assert report["cpu"]["isa"] in ("amx", "avx512", "avx2", "scalar")
    assert "torch" in report["backends"]
    assert set(report["kernels"]) >= {"attention", "bias_gelu", "bias_residual_layer_norm", "embedding_layer_norm"}
