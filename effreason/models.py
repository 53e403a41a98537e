"""Find and load Hugging Face checkpoints: a model folder or a training run folder, with its tokenizer exactly as saved."""

from __future__ import annotations

import json
from pathlib import Path

import torch

RUN_MODEL_SUBFOLDERS = ("model", "checkpoint")  # where a training run keeps its model (final, latest)
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_dir(path: str | Path) -> Path:
    """The checkpoint folder for ``path``: ``path`` itself when it holds a checkpoint
    (``config.json`` and weights), else the first of ``path/model``, ``path/checkpoint`` (a
    training run folder: final model, latest checkpoint) that does.

    ``FileNotFoundError`` for a missing folder; ``ValueError`` naming the folder when it holds no
    checkpoint or no tokenizer.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    for candidate in (folder, *(folder / name for name in RUN_MODEL_SUBFOLDERS)):
        if is_checkpoint(candidate):
            _require_tokenizer(candidate)
            return candidate
    looked = ", ".join(["./", *(f"{name}/" for name in RUN_MODEL_SUBFOLDERS)])
    raise ValueError(f"{folder} holds no Hugging Face checkpoint (config.json and weights) in {looked}")


def load_model_config(path: str | Path):
    """The Hugging Face config of a model folder, without weights: ``path`` itself when its ``config.json``
    names a ``model_type`` (a checkpoint, or a folder holding only ``config.json`` and a tokenizer), else
    ``path/model`` or ``path/checkpoint`` of a training run folder. ``FileNotFoundError`` when none has one."""
    from transformers import AutoConfig

    folder = Path(path)
    for candidate in (folder, *(folder / name for name in RUN_MODEL_SUBFOLDERS)):
        config_file = candidate / "config.json"
        if config_file.is_file() and "model_type" in json.loads(config_file.read_text()):
            return AutoConfig.from_pretrained(candidate)
    raise FileNotFoundError(f"no model config.json in {folder} (nor in its model/ or checkpoint/)")


def is_checkpoint(folder: Path) -> bool:
    """``config.json`` plus weight files: a Hugging Face checkpoint (a run folder has only the former)."""
    has_weights = any(next(folder.glob(pattern), None) is not None for pattern in WEIGHT_PATTERNS)
    return (folder / "config.json").is_file() and has_weights


def _require_tokenizer(folder: Path) -> None:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"model folder {folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})")


def pick_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``, which must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device} requested but torch sees no CUDA device")
    return resolved


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"`` -> bfloat16 on CUDA (the paper's precision), float32 on CPU; else the named dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {tuple(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_checkpoint(path: str | Path | None = None, *, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"):
    """``(model, tokenizer, folder)``: the causal LM in eval mode on ``device`` and its tokenizer, exactly as
    saved; the one loader of training, evaluation, the sweep and the baselines.

    ``path``: a checkpoint folder or a training run folder (:func:`resolve_model_dir`), or None for
    the built-in warm start. ``device``/``dtype``: as :func:`pick_device` / :func:`pick_dtype`.
    """
    from transformers import AutoModelForCausalLM

    if path is None:
        from effreason.warmstart import warmstart_dir

        path = warmstart_dir()
    folder = resolve_model_dir(path)
    torch_device = pick_device(device)
    tokenizer = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=pick_dtype(dtype, torch_device)).to(torch_device)
    model.eval()
    return model, tokenizer, folder


GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(folder: Path):
    """The tokenizer saved in ``folder``, exactly as saved.

    A plain ``tokenizer.json`` tokenizer (``tokenizer_class`` TokenizersBackend or
    PreTrainedTokenizerFast, as the built-in warm start and the tests save) is loaded as such:
    transformers 5's ``AutoTokenizer`` would rebuild it as the model family's registered class
    (``Qwen2Tokenizer`` for any qwen2 config), whose pre-tokenizer garbles a custom vocabulary.
    Every other tokenizer (a real Qwen or Llama checkpoint's) goes through ``AutoTokenizer``.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(folder)
    settings_file = folder / "tokenizer_config.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    generic = settings.get("tokenizer_class", "PreTrainedTokenizerFast") in GENERIC_TOKENIZER_CLASSES
    if generic and (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def stop_token_ids(model, tokenizer) -> tuple[int, ...]:
    """EOS ids of the tokenizer, then those of the model's generation config (Qwen lists several), each once."""
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = generation_eos if isinstance(generation_eos, (list, tuple)) else [generation_eos]
    ids = tuple(dict.fromkeys(int(i) for i in [tokenizer.eos_token_id, *configured] if i is not None))
    if not ids:
        raise ValueError("model and tokenizer define no EOS token: cannot tell where a response ends")
    return ids


def pad_token_id(tokenizer, stop_ids: tuple[int, ...]) -> int:
    """The tokenizer's pad token, else the first stop token (padding is masked out either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
