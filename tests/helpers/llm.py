"""Tiny decoder LMs for the text-generation tests: a tokenizer and two architectures (Llama-style with
RoPE and GQA, GPT-2-style) built from configs, trained for a few seconds on tests/data/llm/tiny.txt so
that greedy decoding follows the text instead of tossing coins, saved as transformers directories."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "llm"
ARCHS = ("llama", "gpt2")


def train_tokenizer(out: Path, byte_level: bool = False) -> Path:
    """A small BPE tokenizer (tokenizer.json) trained on the corpus: words split on whitespace (96 ids), or
    byte-level like GPT-2's (300 ids; the kind ONNX Runtime GenAI's own tokenizer reads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if byte_level:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
    else:
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(vocab_size=96, special_tokens=["[UNK]"], show_progress=False)
    tok.train([str(DATA / "tiny.txt")], trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    return out / "tokenizer.json"


def build(arch: str, vocab: int, intermediate: int = 128):  # type: ignore[no-untyped-def]
    """A tiny untrained model of `arch` (2 layers, hidden 64; a Llama's MLP `intermediate` wide)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "llama":  # RoPE, RMSNorm, SwiGLU, 4 query heads over 2 kv heads (GQA)
        return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=intermediate,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=256, bos_token_id=0, eos_token_id=0))
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                      bos_token_id=0, eos_token_id=0))


def train(model, ids: list[int], steps: int = 120, seq: int = 32, batch: int = 16):  # type: ignore[no-untyped-def]
    """Next-token training on random windows of `ids`; returns the model in eval mode and its last loss."""
    import torch

    data = torch.tensor(ids)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[s:s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), float(loss.detach())


FACTORY = '''\
"""Factory of the test project: the trained tiny model saved as a transformers directory."""
from pathlib import Path

from transformers import AutoModelForCausalLM


def load(path):
    return AutoModelForCausalLM.from_pretrained(Path(__file__).parent / path, local_files_only=True)
'''


def make_project(root: Path, archs: tuple[str, ...] = ARCHS, steps: int = 120, untrained: bool = False,
                 byte_level: bool = False) -> dict[str, float]:
    """Write a deploy project under `root`: tokenizer (byte-level BPE if `byte_level`), prompts, one trained
    model per arch (and an untrained Llama named `untrained`), no targets (callers add them). Returns the
    final training losses."""
    from tokenizers import Tokenizer

    root.mkdir(parents=True, exist_ok=True)
    tok_path = train_tokenizer(root / "tokenizer", byte_level)
    ids = Tokenizer.from_file(str(tok_path)).encode((DATA / "tiny.txt").read_text()).ids
    for name in ("prompts.txt", "held.txt"):
        shutil.copy(DATA / name, root / name)
    (root / "lm.py").write_text(FACTORY)
    vocab = Tokenizer.from_file(str(tok_path)).get_vocab_size()
    losses = {}
    models = []
    for arch in archs:
        model, losses[arch] = train(build(arch, vocab), ids, steps)
        model.save_pretrained(root / arch)
        models.append(model_yaml(arch))
    if untrained:  # near-tied logits: the model on which quantization noise flips greedy tokens
        build("llama", vocab).eval().save_pretrained(root / "untrained")
        models.append(model_yaml("untrained"))
    (root / "deploy.yaml").write_text("models:\n" + textwrap.indent("".join(models), "  ") + "targets: {}\n")
    return losses


def add_trained(root: Path, name: str, arch: str, steps: int = 100, intermediate: int = 128) -> str:
    """Train one more model of `arch` on the corpus with the project's tokenizer, save it as `root/name`; returns
    its models: entry (for deploy.yaml) and leaves deploy.yaml alone."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(root / "tokenizer" / "tokenizer.json"))
    ids = tok.encode((DATA / "tiny.txt").read_text()).ids
    model, _ = train(build(arch, tok.get_vocab_size(), intermediate), ids, steps)
    model.save_pretrained(root / name)
    return model_yaml(name)


def model_yaml(name: str) -> str:
    return textwrap.dedent(f"""\
      {name}:
        task: text-generation
        source: {{factory: "lm:load", kwargs: {{path: {name}}}, code: ["{name}/*"]}}
        generation: {{max_seq_len: 32, max_cache_len: 64, prompts: prompts.txt, held_text: held.txt,
                     new_tokens: 12, tokenizer: tokenizer}}
    """)
