"""TEST-ONLY STAND-IN for flash-attn, never installed by the product.

flash-attn's prebuilt wheels are on GitHub (out of reach here and on the
accelerator host) and its compile takes longer than either allows, so tests
that must import or run KTransformers' attention put this folder on
PYTHONPATH. `flash_attn_func` computes the same result as the real kernel
with torch's scaled_dot_product_attention (slower, same maths); the other
entry points KTransformers imports but the default DeepSeek rule does not call
raise, so a path that needs them fails loudly instead of computing wrongly."""

import torch
import torch.nn.functional as F

__version__ = "0.0.0+ktappliance.test.standin"


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """q: (batch, seqlen_q, heads, dim); k, v: (batch, seqlen_k, heads_k, dim[_v])."""
    if window_size != (-1, -1) or softcap or alibi_slopes is not None or return_attn_probs:
        raise NotImplementedError("flash_attn stand-in: only plain (causal) attention")
    heads, heads_k = q.shape[2], k.shape[2]
    if heads != heads_k:  # grouped-query attention: repeat the key/value heads
        k = k.repeat_interleave(heads // heads_k, dim=2)
        v = v.repeat_interleave(heads // heads_k, dim=2)
    # flash-attn's causal mask is aligned to the bottom-right when seqlen_q < seqlen_k.
    sq, sk = q.shape[1], k.shape[1]
    mask = None
    if causal and sq != sk:
        mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
        dropout_p=dropout_p, is_causal=causal and sq == sk, scale=softmax_scale)
    return out.transpose(1, 2).contiguous()


def _not_in_standin(name):
    def missing(*args, **kwargs):
        raise NotImplementedError(f"flash_attn stand-in: {name} is not provided")
    missing.__name__ = name
    return missing


flash_attn_varlen_func = _not_in_standin("flash_attn_varlen_func")
flash_attn_with_kvcache = _not_in_standin("flash_attn_with_kvcache")
