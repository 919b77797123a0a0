"""The UNet's transformer blocks in the Neural Engine's layout (``--attention split_einsum_v2``),
the form Apple's ml-stable-diffusion recommends for ``CPU_AND_NE``.

The Neural Engine works on 4-D tensors in (B, C, 1, S) layout, channels second and the
sequence last, and runs convolutions far better than matrix products of 3-D tensors. Each
``Transformer2DModel`` of a diffusers UNet is replaced, in place, by one that keeps its
activations in that layout from ``proj_in`` to ``proj_out``:

- every linear layer is a 1x1 convolution (the same weights, reshaped to (out, in, 1, 1));
- layer norm normalises over the channel axis (axis 1), with the same weight and bias;
- attention is computed head by head with einsum in that layout, and the queries of each head
  in chunks (Apple's "v2": smaller intermediate tensors for long sequences at large sizes);
- the text context arrives as diffusers gives it, (B, 77, C), and is laid out once per block.

Everything else (ResNet blocks, down/up sampling, embeddings) is already convolutional and is
left as it is. Module and parameter names do not change, so an analysis's mixed-bit recipe
applies by layer name as before; the weights of the 1x1 convolutions are the linear layers',
so the same diffusers checkpoint loads. Written from the description of Apple's layout and
the diffusers modules it replaces, not from Apple's code.
"""

from __future__ import annotations

from typing import Any

QUERY_CHUNK = 512  # queries per chunk in split_einsum_v2 (sequences up to 4096 at SD's 64x64)


def _conv_from_linear(linear: Any) -> Any:
    """A 1x1 convolution computing ``linear`` on (B, C, 1, S) tensors, same weights."""
    import torch
    from torch import nn

    conv = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(linear.weight[:, :, None, None])
        if linear.bias is not None and conv.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def _modules() -> dict[str, type]:
    """The ANE module classes (built on first use: torch is imported lazily)."""
    import torch
    from torch import nn

    class LayerNormANE(nn.Module):
        """Layer norm over the channel axis of (B, C, 1, S), with nn.LayerNorm's parameters."""

        def __init__(self, norm: nn.LayerNorm) -> None:
            super().__init__()
            self.eps = norm.eps
            self.weight = norm.weight
            self.bias = norm.bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean = x.mean(dim=1, keepdim=True)
            centred = x - mean
            var = (centred * centred).mean(dim=1, keepdim=True)
            out = centred * torch.rsqrt(var + self.eps)
            if self.weight is not None:
                out = out * self.weight.view(1, -1, 1, 1)
            if self.bias is not None:
                out = out + self.bias.view(1, -1, 1, 1)
            return out

    class AttentionANE(nn.Module):
        """diffusers' Attention as 1x1 convolutions, per head, queries chunked."""

        def __init__(self, attn: Any) -> None:
            super().__init__()
            self.heads = attn.heads
            self.scale = attn.scale
            self.to_q = _conv_from_linear(attn.to_q)
            self.to_k = _conv_from_linear(attn.to_k)
            self.to_v = _conv_from_linear(attn.to_v)
            self.to_out = nn.ModuleList([_conv_from_linear(attn.to_out[0]), attn.to_out[1]])

        def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
            context = x if context is None else context
            q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
            dim_head = q.shape[1] // self.heads
            seq = q.shape[3]
            heads = []
            for h in range(self.heads):
                sl = slice(h * dim_head, (h + 1) * dim_head)
                qh, kh, vh = q[:, sl], k[:, sl], v[:, sl]  # (B, d, 1, S), (B, d, 1, Sk)
                chunks = []
                for start in range(0, seq, QUERY_CHUNK):
                    qc = qh[:, :, :, start : start + QUERY_CHUNK]
                    # weights (B, Sk, 1, Sq): keys on the channel axis, softmax over them
                    w = torch.einsum("bchq,bchk->bkhq", qc, kh) * self.scale
                    w = w.softmax(dim=1)
                    chunks.append(torch.einsum("bkhq,bchk->bchq", w, vh))
                heads.append(torch.cat(chunks, dim=3) if len(chunks) > 1 else chunks[0])
            out = self.to_out[0](torch.cat(heads, dim=1))
            return self.to_out[1](out)

    class FeedForwardANE(nn.Module):
        """diffusers' FeedForward with GEGLU (or GELU) as 1x1 convolutions."""

        def __init__(self, ff: Any) -> None:
            super().__init__()
            act, drop, out = ff.net[0], ff.net[1], ff.net[2]
            self.gated = type(act).__name__ == "GEGLU"
            if type(act).__name__ not in ("GEGLU", "GELU"):
                raise ValueError(
                    f"no ANE form for the feed-forward activation {type(act).__name__}"
                )
            self.approximate = getattr(act, "approximate", "none")
            act.proj = _conv_from_linear(act.proj)
            self.net = nn.ModuleList([act, drop, _conv_from_linear(out)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            project: Any = self.net[0].proj
            y = project(x)
            if self.gated:
                y, gate = y.chunk(2, dim=1)
                y = y * nn.functional.gelu(gate)
            else:
                y = nn.functional.gelu(y, approximate=self.approximate)
            return self.net[2](self.net[1](y))

    class BasicTransformerBlockANE(nn.Module):
        """Self-attention, cross-attention, feed-forward, each after a norm and around a
        residual, as SD's BasicTransformerBlock (layer_norm type), in (B, C, 1, S)."""

        def __init__(self, block: Any) -> None:
            super().__init__()
            if block.norm_type != "layer_norm" or block.only_cross_attention or block.pos_embed:
                raise ValueError("no ANE form for this transformer block (not Stable Diffusion's)")
            self.norm1 = LayerNormANE(block.norm1)
            self.attn1 = AttentionANE(block.attn1)
            self.norm2 = LayerNormANE(block.norm2) if block.attn2 is not None else None
            self.attn2 = AttentionANE(block.attn2) if block.attn2 is not None else None
            self.norm3 = LayerNormANE(block.norm3)
            self.ff = FeedForwardANE(block.ff)

        def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
            x = self.attn1(self.norm1(x)) + x
            if self.attn2 is not None and self.norm2 is not None:
                x = self.attn2(self.norm2(x), context) + x
            return self.ff(self.norm3(x)) + x

    class Transformer2DModelANE(nn.Module):
        """A UNet's Transformer2DModel with its inside in (B, C, 1, H*W)."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.norm = model.norm
            linear = bool(model.use_linear_projection)
            self.proj_in = _conv_from_linear(model.proj_in) if linear else model.proj_in
            self.proj_out = _conv_from_linear(model.proj_out) if linear else model.proj_out
            self.transformer_blocks = nn.ModuleList(
                BasicTransformerBlockANE(b) for b in model.transformer_blocks
            )

        def forward(
            self,
            hidden_states: torch.Tensor,
            encoder_hidden_states: torch.Tensor | None = None,
            *_args: Any,
            return_dict: bool = True,
            **_kwargs: Any,
        ) -> Any:
            b, _, height, width = hidden_states.shape
            residual = hidden_states
            x = self.proj_in(self.norm(hidden_states))
            x = x.reshape(b, x.shape[1], 1, height * width)
            context = None
            if encoder_hidden_states is not None:  # (B, 77, C) -> (B, C, 1, 77)
                context = encoder_hidden_states.transpose(1, 2).unsqueeze(2)
            for block in self.transformer_blocks:
                x = block(x, context)
            x = self.proj_out(x.reshape(b, x.shape[1], height, width))
            out = x + residual
            return (out,) if not return_dict else _Output(out)

    class _Output:
        def __init__(self, sample: torch.Tensor) -> None:
            self.sample = sample

    return {"Transformer2DModel": Transformer2DModelANE}


def to_neural_engine_layout(unet: Any) -> int:
    """Replace, in place, each Transformer2DModel of ``unet`` by its (B, C, 1, S) form;
    returns how many. Weights are shared or copied, never changed."""
    ane = _modules()["Transformer2DModel"]
    replaced = 0
    for name, module in list(unet.named_modules()):
        if type(module).__name__ != "Transformer2DModel" or not name:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name) if parent_name else unet
        new = ane(module)
        if child.isdigit():
            parent[int(child)] = new
        else:
            setattr(parent, child, new)
        replaced += 1
    return replaced
