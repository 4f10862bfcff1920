"""Write a tiny, real GGUF model that llama.cpp loads and runs.

Random weights in the llama architecture (what llama.cpp's server loads with
no extra files), a small SentencePiece-style vocabulary with byte fallback so
any text tokenizes, and a chat template. Its answers are noise; what matters
is that it is a real model file, read by real engines.

    python tests/support/tiny_gguf.py OUT_DIR            # OUT_DIR/tiny-r1.gguf
    python tests/support/tiny_gguf.py OUT_DIR --split 3  # + OUT_DIR/Tiny-R1-F32/Tiny-R1-F32-0000N-of-00003.gguf

The split variant mirrors Unsloth's UD-IQ1_S layout (a folder of
NAME-0000N-of-0000M.gguf shards, the first one given to the engine).
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import numpy as np

import gguf

N_EMBD = 64
N_HEAD = 4
N_LAYER = 3
N_FF = 128
N_CTX = 4096
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}"
)
SPECIAL = ["<|system|>", "<|user|>", "<|assistant|>", "<think>", "</think>"]


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    tokens += SPECIAL
    types += [gguf.TokenType.USER_DEFINED] * len(SPECIAL)
    words = ["\u2581"] + [f"\u2581{c}" for c in string.ascii_lowercase] + list(string.ascii_lowercase)
    words += ["\u2581the", "\u2581hello", "\u2581world", "\u2581think", "\u2581answer", "."]
    tokens += words
    types += [gguf.TokenType.NORMAL] * len(words)
    scores = [0.0] * (len(tokens) - len(words)) + [-float(i) for i in range(len(words))]
    return tokens, scores, [int(t) for t in types]


def tensors(n_vocab: int, seed: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)

    def weight(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)

    out = [("token_embd.weight", weight(n_vocab, N_EMBD))]
    for layer in range(N_LAYER):
        prefix = f"blk.{layer}"
        out += [
            (f"{prefix}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32)),
            (f"{prefix}.attn_q.weight", weight(N_EMBD, N_EMBD)),
            (f"{prefix}.attn_k.weight", weight(N_EMBD, N_EMBD)),
            (f"{prefix}.attn_v.weight", weight(N_EMBD, N_EMBD)),
            (f"{prefix}.attn_output.weight", weight(N_EMBD, N_EMBD)),
            (f"{prefix}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32)),
            (f"{prefix}.ffn_gate.weight", weight(N_FF, N_EMBD)),
            (f"{prefix}.ffn_up.weight", weight(N_FF, N_EMBD)),
            (f"{prefix}.ffn_down.weight", weight(N_EMBD, N_FF)),
        ]
    out += [("output_norm.weight", np.ones(N_EMBD, dtype=np.float32)),
            ("output.weight", weight(n_vocab, N_EMBD))]
    return out


def write_model(path: Path, *, split: int = 1, name: str = "Tiny-R1", seed: int = 0,
                padding_mib: int = 0) -> list[Path]:
    """Write the model; with split > 1, as that many shards named like
    Unsloth's. Returns the files written, first shard first. padding_mib adds
    an unused tensor to the last shard (big files for download tests; llama.cpp
    would refuse the extra tensor)."""
    tokens, scores, types = vocabulary()
    all_tensors = tensors(len(tokens), seed)
    if padding_mib:
        all_tensors.append(("padding.weight", np.zeros((padding_mib * 256, 1024), dtype=np.float32)))
    per_shard = -(-len(all_tensors) // split) if split > 1 else 0
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, "llama", split_max_tensors=per_shard)
    writer.add_name(name)
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)
    for tensor_name, data in all_tensors:
        writer.add_tensor(tensor_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if split > 1:
        return [path.with_name(f"{path.stem}-{i:05d}-of-{split:05d}.gguf") for i in range(1, split + 1)]
    return [path]


def write_test_models(out_dir: Path) -> dict[str, Path]:
    """The single-file model and its 3-shard twin, as the tests use them."""
    out_dir = Path(out_dir)
    single = write_model(out_dir / "tiny-r1.gguf")[0]
    shards = write_model(out_dir / "Tiny-R1-F32" / "Tiny-R1-F32.gguf", split=3)
    return {"single": single, "split_first": shards[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    for label, path in write_test_models(args.out_dir).items():
        print(f"{label}: {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
