"""The cost tools: eval_cost and text_cost on the tiny slice / BERT, and every tool's
``--report_only`` writing its committed report again from the committed JSON."""

import os
import shutil
from pathlib import Path

import pytest

from benchmarks import eval_cost, flip_cost, new_items, scaling, text_cost, throughput

DOCS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"


def test_eval_cost_interleaved(run_config, tiny_encoder, tmp_path):
    """CELA and its backbone scored alternately on the same test loader; the report."""
    files, overrides = run_config(text_encoder=tiny_encoder)
    result = eval_cost.measure("ml-tiny", rounds=2, overrides=overrides, config_file_list=files, log=lambda *_: None)
    assert set(result["samples_per_s"]) == {"DIN", "CELA"}
    assert all(len(v) == 2 and min(v) > 0 for v in result["samples_per_s"].values())
    assert result["ratio"] == pytest.approx(result["median_samples_per_s"]["CELA"] / result["median_samples_per_s"]["DIN"])
    assert result["n_params"]["CELA"] > result["n_params"]["DIN"]  # the text projection
    path = eval_cost.write_report(result, str(tmp_path), "python -m benchmarks.eval_cost --dataset=ml-tiny")
    assert "CELA / DIN" in open(path).read() and os.path.isfile(path[:-3] + ".json")


def test_flip_cost_interleaved(run_config, tiny_encoder, tmp_path):
    """Every model trained and scored in every round, on its own batches; the report."""
    files, overrides = run_config(text_encoder=tiny_encoder, flip_max_prompt_length=64)
    result = flip_cost.measure("ml-tiny", rounds=2, eval_rows=16, train_batches=2, overrides=overrides,
                               config_file_list=files, log=lambda *_: None)
    models = {"DIN", "DCNV2", "CELA", "FLIP-textOnly", "FLIP", "FLIP (fp32)"}
    for kind in ("train", "score"):
        assert set(result["per_s"][kind]) == models
        assert all(len(v) == 2 and min(v) > 0 for v in result["per_s"][kind].values())
    assert result["eval_rows"] == 16 and result["precision"]["FLIP (fp32)"] == "fp32"
    assert result["batch_size"]["FLIP"] == 32 and result["batch_size"]["DIN"] > 32  # each as it trains
    path = flip_cost.write_report(result, str(tmp_path), "python -m benchmarks.flip_cost --dataset=ml-tiny")
    text = open(path).read()
    assert "| FLIP (fp32) | 32 | fp32 |" in text
    os.remove(path)
    flip_cost.main(["--report_only", "--dataset=ml-tiny", f"--out={tmp_path}"])  # from the JSON alone
    assert open(path).read() == text


def test_throughput_interleaved(run_config, tiny_encoder, tmp_path):
    """Both paths of every model trained and scored in every round and thread count, from the same
    weights; the FLOP count; the report."""
    files, overrides = run_config(text_encoder=tiny_encoder)
    args = [f"--{k}={v}" for k, v in overrides.items()]
    result = throughput.measure("ml-tiny", ["DIN", "CELA", "DeepFM"], threads=(1, 2), rounds=2, batches=2,
                                args=args, log=lambda *_: None, min_s=0.0, config_file_list=files)
    for t in ("1", "2"):
        for kind in ("train", "score"):
            assert set(result["per_s"][t][kind]) == {"DIN", "CELA", "DeepFM"}
            assert all(len(v[p]) == 2 and min(v[p]) > 0 for v in result["per_s"][t][kind].values()
                       for p in throughput.PATHS)
    train_flops, score_flops = result["matmul_flops_per_sample"]["DIN"]
    assert train_flops > score_flops > 0  # the backward's products too
    path = throughput.write_report(result, str(tmp_path), "python -m benchmarks.throughput --dataset=ml-tiny")
    text = open(path).read()
    assert "## 2 threads" in text and "| DeepFM |" in text
    os.remove(path)
    throughput.main(["--report_only", "--dataset=ml-tiny", f"--out={tmp_path}"])
    assert open(path).read() == text


def test_text_cost_core(tiny_encoder, tmp_path):
    """The four measurements on a tiny random BERT and a few texts; the report section."""
    settings = {"text_pooling": "mean", "simcse_temperature": 0.05, "mlm_weight": 0.1,
                "mlm_probability": 0.15, "text_trainable_layers": 1, "max_text_length": 32,
                "dap_learning_rate": 5e-5}
    texts = ["movie title: toy story; class: animation", "a jump rope", "bicycle fender rear",
             "movie title: heat", "olympic style jump rope for training"] * 2
    result = text_cost.measure(texts, tiny_encoder, settings, batch_size=4, seq_len=48, log=lambda *_: None)
    assert result["dap_straightforward"]["items_per_s"] > 0 and result["dap_plugin"]["items_per_s"] > 0
    assert result["dap_plugin"]["trainable_params"] < result["dap_straightforward"]["trainable_params"]
    assert result["encode_max_abs_diff"] < 1e-4  # padding does not change the pooled vectors
    amp = result["precision"]  # fp32 vs bf16 autocast, interleaved: both measured, vectors close
    assert amp["dap_items_per_s"]["bf16"] > 0 and amp["encode_items_per_s"]["fp32"] > 0
    assert 0.99 < amp["cosine_min"] <= 1.0 + 1e-6 and amp["auto_picks"] in ("bf16", "fp32")
    result.update(encoder=tiny_encoder, date="today", dataset="x", command="cmd")
    md, _ = text_cost.write_outputs(str(tmp_path), "x", result, "cmd")
    text_cost.write_outputs(str(tmp_path), "x", result, "cmd")  # same key: replaced, not appended
    content = open(md).read()
    assert content.count("<!-- text-cost:") == 1 and "DAP training pass" in content and "bf16 autocast" in content
    os.remove(md)
    text_cost.main(["--report_only", "--dataset=x", f"--out={tmp_path}"])  # from the JSON alone
    assert open(md).read() == content


@pytest.mark.parametrize("tool, main, dataset, kind", [
    ("scaling", scaling.main, "ml-100k", "scaling"),
    ("new_items", new_items.main, "ml-100k", "new-items"),
    ("eval_cost", eval_cost.main, "amazon-sports-ids", "eval-cost"),
    ("text_cost", text_cost.main, "amazon-sports-ids", "text-cost"),
    ("flip_cost", flip_cost.main, "amazon-sports", "flip-cost"),
    ("throughput", throughput.main, "amazon-sports", "throughput"),
    ("throughput", throughput.main, "ml-100k", "throughput"),
])
def test_report_only_writes_the_committed_report_again(tool, main, dataset, kind, tmp_path):
    """The markdown written from the committed JSON is the committed markdown, byte for byte."""
    shutil.copy(DOCS / f"{dataset}-{kind}.json", tmp_path)
    main([f"--dataset={dataset}", f"--out={tmp_path}", "--report_only"])
    written = (tmp_path / f"{dataset}-{kind}.md").read_text()
    committed = (DOCS / f"{dataset}-{kind}.md").read_text()
    assert written == committed
    assert sorted(os.listdir(tmp_path)) == sorted([f"{dataset}-{kind}.json", f"{dataset}-{kind}.md"]
                                                  + ([f"{dataset}-scaling.png"] if tool == "scaling" else []))
