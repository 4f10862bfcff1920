"""A tiny DeepSeek-V3-architecture model that KTransformers and llama.cpp load.

The real structure at toy sizes: MLA attention with DeepSeek's own head
shapes (kv_lora_rank 512, rope 64, nope 128, v 128, so the Triton decode kernel
and Marlin see the shapes they see on R1), one leading dense layer, then MoE
layers with shared and routed experts and sigmoid/noaux_tc routing. Random
weights (answers are noise; the proof is that tokens come back through every
layer), a byte-level BPE tokenizer trained with `tokenizers`, a config
directory as KTransformers' --model_path expects it, and one GGUF with
llama.cpp's deepseek2 tensor names:

    variant "q4k_iq1s": experts Q4_K in the first MoE layer and IQ1_S in the
        next (a dynamic quant's mix), attention and shared experts Q4_K,
        output Q6_K: the llamafile backend of v0.2.3;
    variant "bf16": every matrix BF16, what the AMX backends of v0.3.2 need.

    python tests/support/tiny_deepseek.py OUT_DIR [--variant bf16]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import gguf

Q = gguf.GGMLQuantizationType
BOS, EOS, USER, ASSISTANT, THINK, END_THINK = (
    "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>")
SPECIAL_TOKENS = [BOS, EOS, USER, ASSISTANT, THINK, END_THINK]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% else %}" + ASSISTANT + "{{ message['content'] }}" + EOS + "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)
# The config's own class: the model directory names it in auto_map, as
# DeepSeek's repository does; transformers 4.43 has no deepseek_v3 built in.
CONFIG_MODULE = '''"""DeepSeek-V3 configuration for the ktappliance tiny test model."""
from transformers import PretrainedConfig


class DeepseekV3Config(PretrainedConfig):
    model_type = "deepseek_v3"
    keys_to_ignore_at_inference = ["past_key_values"]
'''


@dataclass(frozen=True)
class Shape:
    vocab: int = 1024
    hidden: int = 512
    layers: int = 3
    dense_layers: int = 1
    heads: int = 4
    q_lora_rank: int = 512
    kv_lora_rank: int = 512
    qk_nope: int = 128
    qk_rope: int = 64
    v_head: int = 128
    intermediate: int = 1024
    moe_intermediate: int = 256
    experts: int = 8
    experts_used: int = 2
    expert_groups: int = 2
    shared_experts: int = 1
    context: int = 4096


SHAPE = Shape()
CORPUS = """The appliance runs a large mixture of experts model on one graphics card and a
big server processor. Attention and the shared experts stay on the card; the routed
experts live in main memory and run on every core of the processor. A user asks a
question, the server streams tokens back, and the web page shows the answer as it
arrives. Quantized weights keep the model small enough: four bits for most matrices,
fewer for the experts that are rarely chosen. The tokenizer splits text into pieces,
the embedding turns each piece into a vector, the layers mix those vectors, and the
output head picks the next piece. Reasoning models first think, then answer; the
thinking is shown apart from the answer so the reader can skip it. Hello world, how
are you today? Please explain why the sky is blue, what a prime number is, and how
to bake bread with flour, water, salt and yeast. Numbers 0 1 2 3 4 5 6 7 8 9 10 100.
"""


def train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([CORPUS] * 4, trainer=trainer)
    return tokenizer


def config_json(shape: Shape) -> dict:
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"},
        "model_type": "deepseek_v3",
        "torch_dtype": "bfloat16",
        "vocab_size": shape.vocab, "hidden_size": shape.hidden, "intermediate_size": shape.intermediate,
        "moe_intermediate_size": shape.moe_intermediate, "num_hidden_layers": shape.layers,
        "first_k_dense_replace": shape.dense_layers, "moe_layer_freq": 1,
        "num_attention_heads": shape.heads, "num_key_value_heads": shape.heads,
        "q_lora_rank": shape.q_lora_rank, "kv_lora_rank": shape.kv_lora_rank,
        "qk_nope_head_dim": shape.qk_nope, "qk_rope_head_dim": shape.qk_rope, "v_head_dim": shape.v_head,
        "n_routed_experts": shape.experts, "num_experts_per_tok": shape.experts_used,
        "n_shared_experts": shape.shared_experts, "n_group": shape.expert_groups, "topk_group": 1,
        "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
        "routed_scaling_factor": 2.5, "ep_size": 1, "aux_loss_alpha": 0.001, "seq_aux": True,
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 10000,
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": shape.context,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
        "max_position_embeddings": shape.context * 40, "initializer_range": 0.02,
        "attention_bias": False, "attention_dropout": 0.0, "pretraining_tp": 1,
        "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": False, "use_cache": True,
        "num_nextn_predict_layers": 0,
    }


class Weights:
    """Random tensors in GGML block formats, magnitudes a trained model has."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def float(self, rows: int, cols: int, scale: float = 0.02) -> np.ndarray:
        return (self.rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    def _f16(self, count: int, value: float) -> np.ndarray:
        return (np.full(count, value) * self.rng.uniform(0.5, 1.5, count)).astype(np.float16).view(np.uint8).reshape(count, 2)

    def _bytes(self, count: int, width: int) -> np.ndarray:
        return self.rng.integers(0, 256, (count, width), dtype=np.uint8)

    def blocks(self, qtype: Q, shape: tuple[int, ...]) -> np.ndarray:
        """Raw bytes shaped (..., row_bytes) for a tensor of numpy shape `shape`."""
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        *outer, cols = shape
        assert cols % block == 0, f"{qtype.name} needs rows in multiples of {block}"
        count = int(np.prod(outer)) * cols // block
        if qtype == Q.Q4_K:   # d, dmin (f16), 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
            raw = np.hstack([self._f16(count, 1e-4), self._f16(count, 4e-5), self._bytes(count, 140)])
        elif qtype == Q.Q6_K:  # 128 + 64 bytes of 6-bit values, 16 int8 scales, d (f16)
            scales = self.rng.integers(-32, 32, (count, 16), dtype=np.int8).view(np.uint8)
            raw = np.hstack([self._bytes(count, 192), scales, self._f16(count, 5e-5)])
        elif qtype == Q.IQ1_S:  # d (f16), 32 bytes of grid indices, 8 x u16 of high bits and scales
            raw = np.hstack([self._f16(count, 5e-3), self._bytes(count, 48)])
        else:
            raise ValueError(qtype)
        assert raw.shape[1] == size
        return raw.reshape(*outer, cols // block * size)


def tensor_plan(shape: Shape, variant: str) -> list[tuple[str, tuple[int, ...], Q]]:
    """(name, numpy shape, type) for every tensor, in llama.cpp's deepseek2 names."""
    bf16 = variant == "bf16"
    mat = Q.BF16 if bf16 else Q.Q4_K
    n_q = shape.heads * (shape.qk_nope + shape.qk_rope)
    plan = [("token_embd.weight", (shape.vocab, shape.hidden), mat)]
    for layer in range(shape.layers):
        blk = f"blk.{layer}"
        plan += [
            (f"{blk}.attn_norm.weight", (shape.hidden,), Q.F32),
            (f"{blk}.attn_q_a_norm.weight", (shape.q_lora_rank,), Q.F32),
            (f"{blk}.attn_kv_a_norm.weight", (shape.kv_lora_rank,), Q.F32),
            (f"{blk}.attn_q_a.weight", (shape.q_lora_rank, shape.hidden), mat),
            (f"{blk}.attn_q_b.weight", (n_q, shape.q_lora_rank), mat),
            (f"{blk}.attn_kv_a_mqa.weight", (shape.kv_lora_rank + shape.qk_rope, shape.hidden), mat),
            (f"{blk}.attn_kv_b.weight", (shape.heads * (shape.qk_nope + shape.v_head), shape.kv_lora_rank), mat),
            (f"{blk}.attn_output.weight", (shape.hidden, shape.heads * shape.v_head), mat),
            (f"{blk}.ffn_norm.weight", (shape.hidden,), Q.F32),
        ]
        if layer < shape.dense_layers:
            plan += [
                (f"{blk}.ffn_gate.weight", (shape.intermediate, shape.hidden), mat),
                (f"{blk}.ffn_up.weight", (shape.intermediate, shape.hidden), mat),
                (f"{blk}.ffn_down.weight", (shape.hidden, shape.intermediate), mat),
            ]
            continue
        experts = Q.BF16 if bf16 else (Q.Q4_K if layer == shape.dense_layers else Q.IQ1_S)
        shared = shape.moe_intermediate * shape.shared_experts
        plan += [
            (f"{blk}.ffn_gate_inp.weight", (shape.experts, shape.hidden), Q.F32),
            (f"{blk}.exp_probs_b.bias", (shape.experts,), Q.F32),
            (f"{blk}.ffn_gate_exps.weight", (shape.experts, shape.moe_intermediate, shape.hidden), experts),
            (f"{blk}.ffn_up_exps.weight", (shape.experts, shape.moe_intermediate, shape.hidden), experts),
            (f"{blk}.ffn_down_exps.weight", (shape.experts, shape.hidden, shape.moe_intermediate), experts),
            (f"{blk}.ffn_gate_shexp.weight", (shared, shape.hidden), mat),
            (f"{blk}.ffn_up_shexp.weight", (shared, shape.hidden), mat),
            (f"{blk}.ffn_down_shexp.weight", (shape.hidden, shared), mat),
        ]
    plan += [("output_norm.weight", (shape.hidden,), Q.F32),
             ("output.weight", (shape.vocab, shape.hidden), Q.BF16 if bf16 else Q.Q6_K)]
    return plan


def gguf_vocabulary(tokenizer, vocab: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id, their GGUF types and the BPE merges; padded to the model's vocab."""
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    assert [i for _, i in by_id] == list(range(len(by_id))) and len(by_id) <= vocab
    tokens = [token for token, _ in by_id]
    types = [int(gguf.TokenType.CONTROL if token in SPECIAL_TOKENS else gguf.TokenType.NORMAL) for token in tokens]
    for pad in range(len(tokens), vocab):
        tokens.append(f"<｜pad_{pad}｜>")
        types.append(int(gguf.TokenType.UNUSED))
    return tokens, types, legacy_tokenizer_data(tokenizer)["model"]["merges"]


def legacy_tokenizer_data(tokenizer) -> dict:
    """The tokenizer's JSON with merges as "a b" strings: what GGUF stores, and
    what tokenizers before 0.20 (v0.2.3 pins 0.19) read; newer ones write pairs."""
    data = json.loads(tokenizer.to_str())
    data["model"]["merges"] = [" ".join(pair) if isinstance(pair, (list, tuple)) else pair
                               for pair in data["model"]["merges"]]
    return data


def write_gguf(path: Path, tokenizer, shape: Shape, variant: str, seed: int) -> None:
    writer = gguf.GGUFWriter(path, "deepseek2")
    writer.add_name(f"Tiny-DeepSeek-V3-{variant}")
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.intermediate)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_expert_used_count(shape.experts_used)
    writer.add_expert_count(shape.experts)
    writer.add_leading_dense_block_count(shape.dense_layers)
    writer.add_vocab_size(shape.vocab)
    writer.add_q_lora_rank(shape.q_lora_rank)
    writer.add_kv_lora_rank(shape.kv_lora_rank)
    writer.add_key_length(shape.qk_nope + shape.qk_rope)
    writer.add_value_length(shape.v_head)
    writer.add_expert_feed_forward_length(shape.moe_intermediate)
    writer.add_expert_shared_count(shape.shared_experts)
    writer.add_expert_weights_scale(2.5)
    writer.add_expert_weights_norm(True)
    writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    writer.add_rope_dimension_count(shape.qk_rope)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if variant == "bf16" else gguf.LlamaFileType.MOSTLY_Q4_K_M)
    tokens, types, merges = gguf_vocabulary(tokenizer, shape.vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)
    weights = Weights(seed)
    for name, numpy_shape, qtype in tensor_plan(shape, variant):
        if name.endswith("norm.weight"):
            writer.add_tensor(name, np.ones(numpy_shape, dtype=np.float32))
        elif qtype in (Q.F32, Q.BF16):
            data = weights.float(int(np.prod(numpy_shape[:-1])), numpy_shape[-1]).reshape(numpy_shape)
            if name.endswith("exp_probs_b.bias"):
                data = np.zeros(numpy_shape, dtype=np.float32)
            if qtype == Q.BF16:
                data = gguf.quants.quantize(data, Q.BF16)
                writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=Q.BF16)
            else:
                writer.add_tensor(name, data)
        else:
            raw = weights.blocks(qtype, numpy_shape)
            writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_model(out_dir: Path, variant: str = "q4k_iq1s", shape: Shape = SHAPE, seed: int = 0) -> dict[str, Path]:
    """OUT_DIR/config (KTransformers --model_path) and OUT_DIR/gguf/tiny-deepseek-v3-VARIANT.gguf."""
    if variant not in ("q4k_iq1s", "bf16"):
        raise ValueError(f"unknown variant {variant!r}: q4k_iq1s or bf16")
    out_dir = Path(out_dir)
    config_dir, gguf_dir = out_dir / "config", out_dir / "gguf"
    config_dir.mkdir(parents=True, exist_ok=True)
    gguf_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(shape.vocab)
    (config_dir / "tokenizer.json").write_text(json.dumps(legacy_tokenizer_data(tokenizer), ensure_ascii=False),
                                               encoding="utf-8")
    (config_dir / "config.json").write_text(json.dumps(config_json(shape), indent=2))
    (config_dir / "configuration_deepseek.py").write_text(CONFIG_MODULE)
    (config_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": EOS,
        "add_bos_token": False, "add_eos_token": False, "model_max_length": shape.context,
        "chat_template": CHAT_TEMPLATE}, indent=2))
    (config_dir / "generation_config.json").write_text(json.dumps({
        "bos_token_id": 0, "eos_token_id": 1, "do_sample": True, "temperature": 0.6, "top_p": 0.95}, indent=2))
    gguf_file = gguf_dir / f"tiny-deepseek-v3-{variant}.gguf"
    write_gguf(gguf_file, tokenizer, shape, variant, seed)
    return {"config": config_dir, "gguf": gguf_dir, "gguf_file": gguf_file}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--variant", choices=["q4k_iq1s", "bf16"], default="q4k_iq1s")
    args = parser.parse_args()
    paths = write_model(args.out_dir, args.variant)
    print(f"{paths['gguf_file']} ({paths['gguf_file'].stat().st_size} bytes), config in {paths['config']}")


if __name__ == "__main__":
    main()
