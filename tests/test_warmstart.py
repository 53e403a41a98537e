"""The warm-start tokenizer, the shipped checkpoint and the rebuild command."""

import json
import random
import subprocess
import sys

import pytest
import torch

from effreason.tasks.prompting import PAPER_PROMPT, build_prompt, encode_prompt
from effreason.tasks.toy import ToyTask
from effreason.models import load_checkpoint
from effreason.warmstart import (
    SHIPPED_DIR, WarmstartConfig, build_model, build_tokenizer, evaluate, format_table, recheck_token_count, train,
    training_units,
)

shipped = pytest.mark.skipif(not (SHIPPED_DIR / "model.safetensors").exists(), reason="no shipped warm start")


@pytest.fixture(scope="module")
def task():
    return ToyTask()


@pytest.fixture(scope="module")
def warmstart():
    return load_checkpoint(SHIPPED_DIR, device="cpu", dtype="float32")[:2]


@shipped
def test_tokenizer_round_trips_traces_and_prompts(task, warmstart):
    _, tokenizer = warmstart
    rng = random.Random(0)
    for problem in task.problems(21, split="test", seed=5):
        for text in (task.verbose_trace(problem, rng), task.concise_trace(problem), build_prompt(problem.question, tokenizer)):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids) == text
        digits = tokenizer.tokenize(problem.answer)
        assert len(digits) == len(problem.answer)


@shipped
def test_prompt_uses_chat_template_and_stays_short(task, warmstart):
    _, tokenizer = warmstart
    question = task.problems(7, split="test", seed=0)[-1].question
    text = build_prompt(question, tokenizer)
    assert text.startswith(tokenizer.bos_token) and text.endswith("<|im_start|>assistant\n")
    assert PAPER_PROMPT.format(question=question) in text
    ids = encode_prompt(question, tokenizer)
    assert ids[0] == tokenizer.bos_token_id and len(ids) < 100


def test_plain_prompt_without_chat_template():
    class Plain:
        chat_template = None

    assert build_prompt("Q?", Plain()) == "Please reason step by step, and put your final answer within \\boxed{}. Question: Q?"


@shipped
def test_recheck_tokens_are_counted(task, warmstart):
    _, tokenizer = warmstart
    problem = task.make_problem("Start with 7. Step 1: add 5. Step 2: multiply by 3. What is the result?")
    assert recheck_token_count(task.concise_trace(problem), tokenizer) == 0
    verbose = task.concise_trace(problem).replace(" So", " Wait, let me verify step 1: 7 + 5 = 12. Yes. So")
    assert recheck_token_count(verbose, tokenizer) == 17


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads crawl on a busy 2-core machine
    yield
    torch.set_num_threads(threads)


@shipped
def test_shipped_checkpoint_greedy_decodes_held_out_problems(warmstart, one_thread):
    from effreason.eval.generation import generate_responses
    from effreason.models import stop_token_ids
    from effreason.sampler import Sampler, SamplingParams

    model, tokenizer = warmstart
    assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings
    short_chains = ToyTask(2, 4)
    problems = short_chains.problems(12, split="test", seed=11)
    params = SamplingParams(n=1, temperature=0.0, max_tokens=160, stop_token_ids=stop_token_ids(model, tokenizer))
    responses = [row[0] for row in generate_responses(Sampler(model), tokenizer, problems, params)]
    assert all(response.finish_reason == "stop" for response in responses)
    assert all(r.text.startswith("Step 1:") and "\\boxed{" in r.text for r in responses)
    assert sum(short_chains.is_correct(r.text, p) for p, r in zip(problems, responses)) >= 9  # ~100% on 2..4 operations


@shipped
def test_the_shipped_report_is_what_evaluate_gives(task, warmstart, one_thread):
    report = json.loads((SHIPPED_DIR / "warmstart_report.json").read_text())
    config = WarmstartConfig(eval_problems=24)
    metrics = evaluate(*warmstart, task, config)
    assert set(report["eval"]) == set(metrics) and set(report["eval"]["by_difficulty"]) == set(metrics["by_difficulty"])
    assert 0.3 < metrics["recheck_share"] < 0.8 and metrics["truncation_rate"] == 0.0
    lines = format_table(metrics).splitlines()
    assert lines[0].split() == ["difficulty", "accuracy", "mean", "tokens", "recheck", "share", "eos"]
    assert lines[-1].split()[0] == "all" and len(lines) == 2 + len(task.difficulties)


def test_sft_step_minimises_the_response_cross_entropy(task):
    """The warm start's update (the loop's optimizer_steps with the rs-sft loss) logs HF's
    cross-entropy over response tokens (prompt labels -100) on the same first batch."""
    config = WarmstartConfig(steps=1, batch_size=4, warmup_steps=1)
    tokenizer = build_tokenizer(task)
    torch.manual_seed(0)
    model = build_model(config, tokenizer)
    units = next(training_units(task, tokenizer, config))
    rows = [(unit.prompt_ids + unit.responses[0], [-100] * len(unit.prompt_ids) + unit.responses[0]) for unit in units]
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (length - len(ids)) for ids, _ in rows])
    labels = torch.tensor([targets + [-100] * (length - len(targets)) for _, targets in rows])
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=input_ids != tokenizer.pad_token_id, labels=labels).loss.item()
    lines = []
    train(model, tokenizer, task, config, log=lines.append)
    assert float(lines[0].split()[3]) == pytest.approx(expected, abs=1e-4)


def test_answer_first_config_is_checked():
    assert WarmstartConfig(trace_style="answer-first").trace_style == "answer-first"
    with pytest.raises(ValueError, match="trace_style must be one of"):
        WarmstartConfig(trace_style="answer-last")


@pytest.mark.slow
def test_rebuild_smoke(tmp_path):
    out = tmp_path / "ws"
    command = [sys.executable, "-m", "effreason.warmstart", "--steps", "2", "--eval-problems", "7", "--max-new-tokens", "8", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "warmstart_report.json"):
        assert (out / name).exists()
    report = json.loads((out / "warmstart_report.json").read_text())
    assert report["config"]["steps"] == 2 and report["eval"]["num_problems"] == 7
    model, tokenizer, _ = load_checkpoint(out, device="cpu", dtype="float32")
    assert model.config.vocab_size == len(tokenizer)
