#!/usr/bin/env python3
"""Write tiny, valid GGUF models for the real-upstream e2e tier.

    python gen_models.py DIR        (or SWAPD_MODELS=DIR python gen_models.py)

Writes into DIR:
    tiny-a.gguf      chat model, seed 1
    tiny-b.gguf      chat model, seed 2
    tiny-embed.gguf  model for /v1/embeddings (run llama-server with
                     --embeddings --pooling mean), seed 3

Each is a llama-architecture model with random f32 weights (2 layers,
64-dim, 4 heads, ~0.5 MB), a byte-fallback SentencePiece vocabulary (the
256 byte tokens <0x00>..<0xFF>, a few word pieces and <unk>, <s>, </s>) and a
chat template, so llama-server loads it in milliseconds and generates
thousands of tokens/s on one core.

The output projection only gives weight to printable ASCII, so what the models
"say" is printable gibberish and end-of-sequence is practically never sampled:
a request generates max_tokens tokens.

A file that is already present and valid (same generator version and seed) is
left alone; files are written to a temporary name and renamed.
Requires the `gguf` and `numpy` packages (the e2e venv has them).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import gguf

GEN_VERSION = 1  # bump when the layout below changes, to regenerate caches

N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 128
N_CTX_TRAIN = 2048

MODELS = {
    # file name      (seed, general.name)
    "tiny-a.gguf": (1, "swapd tiny-a"),
    "tiny-b.gguf": (2, "swapd tiny-b"),
    "tiny-embed.gguf": (3, "swapd tiny-embed"),
}

# Very small Jinja chat template (llama-server renders it with --jinja, its
# default, and also recognises nothing special: it is used verbatim).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

WORD_PIECES = ["\u2581", "\u2581the", "\u2581a", "e", "t", "o", "n", "s", "\u2581swap", "d"]


def vocab():
    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    scores = [0.0, 0.0, 0.0]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(gguf.TokenType.BYTE)
        scores.append(0.0)
    for i, piece in enumerate(WORD_PIECES):
        tokens.append(piece)
        types.append(gguf.TokenType.NORMAL)
        scores.append(-1.0 - i)
    return tokens, types, scores


def printable_mask(tokens: list[str]) -> np.ndarray:
    """True for tokens that decode to printable ASCII (or are word pieces)."""
    mask = np.zeros(len(tokens), dtype=bool)
    for i, t in enumerate(tokens):
        if t.startswith("<0x") and len(t) == 6:
            mask[i] = 0x20 <= int(t[3:5], 16) <= 0x7E
        elif not (t.startswith("<") and t.endswith(">")):
            mask[i] = True
    return mask


def write_model(path: str, seed: int, name: str) -> None:
    rng = np.random.default_rng(seed)
    tokens, types, scores = vocab()
    n_vocab = len(tokens)

    def rand(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    tmp = path + ".tmp"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name(name)
    w.add_uint32("swapd.gen_version", GEN_VERSION)
    w.add_uint32("swapd.seed", seed)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)

    w.add_tokenizer_model("llama")  # SentencePiece with byte fallback
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    w.add_token_scores(scores)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    # numpy shape (rows, cols) == ggml ne (cols, rows)
    w.add_tensor("token_embd.weight", rand(n_vocab, N_EMBD, scale=1.0))
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", rand(N_EMBD, N_EMBD))
        w.add_tensor(p + "attn_k.weight", rand(N_EMBD * N_HEAD_KV // N_HEAD, N_EMBD))
        w.add_tensor(p + "attn_v.weight", rand(N_EMBD * N_HEAD_KV // N_HEAD, N_EMBD))
        w.add_tensor(p + "attn_output.weight", rand(N_EMBD, N_EMBD))
        w.add_tensor(p + "ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", rand(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_up.weight", rand(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_down.weight", rand(N_EMBD, N_FF))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    # Rows of unprintable/control tokens are zero (logit 0) while printable
    # rows give logits ~N(0, 8): sampling practically never leaves printable
    # ASCII and never picks </s>.
    out = rand(n_vocab, N_EMBD, scale=1.0)
    out[~printable_mask(tokens)] = 0.0
    w.add_tensor("output.weight", out)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)


def is_valid(path: str, seed: int) -> bool:
    if not os.path.isfile(path):
        return False
    try:
        r = gguf.GGUFReader(path)

        def scalar(key):
            f = r.fields.get(key)
            return None if f is None else int(f.parts[f.data[0]][0])

        return (
            scalar("swapd.gen_version") == GEN_VERSION
            and scalar("swapd.seed") == seed
            and len(r.tensors) == 3 + 9 * N_LAYER
        )
    except Exception:
        return False


def main(argv: list[str]) -> int:
    out_dir = argv[1] if len(argv) > 1 else os.environ.get("SWAPD_MODELS")
    if not out_dir:
        print(__doc__, file=sys.stderr)
        return 2
    os.makedirs(out_dir, exist_ok=True)
    for fname, (seed, name) in MODELS.items():
        path = os.path.join(out_dir, fname)
        if is_valid(path, seed):
            print(f"present  {path} ({os.path.getsize(path)} bytes)")
            continue
        write_model(path, seed, name)
        assert is_valid(path, seed), path
        print(f"wrote    {path} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
