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
from effreason.warmstart import SHIPPED_DIR, greedy_responses, recheck_token_count

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
    model, tokenizer = warmstart
    assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings
    short_chains = ToyTask(2, 4)
    problems = short_chains.problems(12, split="test", seed=11)
    responses = greedy_responses(model, tokenizer, [p.question for p in problems], batch_size=12, max_new_tokens=160)
    correct = 0
    for problem, ids in zip(problems, responses):
        assert ids[-1] == tokenizer.eos_token_id
        text = tokenizer.decode(ids, skip_special_tokens=True)
        assert text.startswith("Step 1:") and "\\boxed{" in text
        correct += short_chains.is_correct(text, problem)
    assert correct >= 9  # the shipped model scores ~100% on 2..4 operations


@pytest.mark.slow
def test_rebuild_smoke(tmp_path):
    out = tmp_path / "ws"
    command = [sys.executable, "-m", "effreason.warmstart", "--steps", "2", "--eval-problems", "7", "--max-new-tokens", "8", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "warmstart_report.json"):
        assert (out / name).exists()
    report = json.loads((out / "warmstart_report.json").read_text())
    assert report["config"]["steps"] == 2 and report["eval"]["overall"]["problems"] == 7
    model, tokenizer, _ = load_checkpoint(out, device="cpu", dtype="float32")
    assert model.config.vocab_size == len(tokenizer)
