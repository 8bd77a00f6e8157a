"""Build the tiny random-weight Llama that `make run`, CI and the tests serve.

Nothing can be downloaded at run time on the machines this project is
developed and tested on, so the project builds its own model: a real Llama
architecture that vLLM's CPU build loads, small enough to load in seconds.
Its weights are random, so its text is noise; what matters is that every
layer of the serving stack (tokenizer, chat template, engine, streaming,
usage accounting) runs for real.

Two properties are engineered on purpose:

- the build is seeded, so two builds are byte-identical;
- the end-of-sequence token can never win: its output row is zero while the
  other rows are scaled up, so its logit (0) sits far below the largest of
  the others. Generation therefore always runs to `max_tokens` (or the
  context limit), which makes token accounting testable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

# Shapes measured to work with vLLM's CPU attention (head_dim 64; 16 fails).
HIDDEN_SIZE = 128
NUM_HEADS = 2
NUM_KV_HEADS = 1
NUM_LAYERS = 2
INTERMEDIATE_SIZE = 256
VOCAB_SIZE = 320
MAX_POSITION_EMBEDDINGS = 256
# Standard deviation of the output layer: with unit-RMS hidden states the
# logits get a spread of about 10, so the zeroed EOS row never wins.
LM_HEAD_STD = 0.9


@dataclass(frozen=True)
class TinyShape:
    """The model's size; the defaults are the tiny model. Benchmarks that need prefill
    to cost something (prefix caching) build a wider, deeper one with a longer context."""

    hidden_size: int = HIDDEN_SIZE
    num_layers: int = NUM_LAYERS
    num_heads: int = NUM_HEADS
    num_kv_heads: int = NUM_KV_HEADS
    intermediate_size: int = INTERMEDIATE_SIZE
    context: int = MAX_POSITION_EMBEDDINGS


BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

TRAINING_TEXT = [
    "Research computing centres run their GPUs inside Slurm allocations.",
    "Scientists want an OpenAI compatible endpoint for many models.",
    "Ray Serve hosts one vLLM deployment per model and scales it.",
    "The federating ingress picks the least loaded site for each request.",
    "Hello! How are you today? I am a tiny language model with random weights.",
    "user assistant system: tell me a story about the quick brown fox.",
    "The quick brown fox jumps over the lazy dog 0123456789 times.",
]


def _build_tokenizer(context: int):
    """A byte-level BPE tokenizer trained on a few fixed sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=context,
    )


def _llama_config(tokenizer, shape: TinyShape):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )


def _build_model(tokenizer, seed: int, shape: TinyShape):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(tokenizer, shape))
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, LM_HEAD_STD)
        model.lm_head.weight[tokenizer.eos_token_id].zero_()
    model.generation_config.do_sample = False
    return model


def build_tiny_model(out_dir: str | Path, seed: int = 0, shape: TinyShape | None = None) -> Path:
    """Write the tiny model (weights, config, tokenizer, chat template) to `out_dir`."""
    shape = shape or TinyShape()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(shape.context)
    if len(tokenizer) > VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, over {VOCAB_SIZE}")
    model = _build_model(tokenizer, seed, shape)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_embedding_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny embedding model to `out_dir`: the tiny Llama's body without its
    output layer (`LlamaModel`, which vLLM serves with `runner: pooling`), its
    tokenizer, and the sentence-transformers files that tell vLLM to mean-pool and
    normalize (no pooler flags needed). Random weights: its vectors carry no meaning,
    so retrieval over it rests on the lexical half of hybrid search."""
    import torch
    from transformers import LlamaModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(MAX_POSITION_EMBEDDINGS)
    tokenizer.chat_template = None
    torch.manual_seed(seed)
    config = _llama_config(tokenizer, TinyShape())
    LlamaModel(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    pooling = {
        "word_embedding_dimension": HIDDEN_SIZE,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_lasttoken": False,
    }
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (out / "2_Normalize").mkdir(exist_ok=True)
    settings = {"max_seq_length": MAX_POSITION_EMBEDDINGS, "do_lower_case": False}
    (out / "sentence_bert_config.json").write_text(json.dumps(settings))
    return out


def model_fingerprint(model_dir: str | Path) -> str:
    """SHA-256 over every file of a model folder, to compare two builds."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(model_dir).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()
