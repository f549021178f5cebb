"""UNet3DConditionModel.forward, in pieces, so StreamingT2V can reach the skip connections.

CAM injects its features into the base UNet's skip features and mid-block output. diffusers'
forward only lets a caller *add* residuals, so this module re-runs the same blocks in the same
order (what vgen uses: a timestep, text embeddings; no class labels, attention masks or extra
residuals) with two hooks: `merge_skips` transforms the tuple of skip features after the down
blocks, `merge_mid` the mid-block output. With no hooks the result equals ``unet(...).sample``.

The encoder half (`encode`) runs on anything that has the UNet's encoder modules, which is how
CAM's trainable copy of the encoder runs the very same code as the base UNet.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

Skips = tuple[torch.Tensor, ...]
MergeSkips = Callable[[Skips], Skips]
MergeMid = Callable[[torch.Tensor], torch.Tensor]


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype diffusers' ModelMixin reports (its first parameter's), for any module."""
    return getattr(module, "dtype", None) or next(module.parameters()).dtype


def time_embedding(module: torch.nn.Module, timestep: Any, sample: torch.Tensor) -> torch.Tensor:
    """Timestep -> embedding [B*F, D], one row per frame, exactly as UNet3DConditionModel does it."""
    timesteps = timestep
    if not torch.is_tensor(timesteps):
        from diffusers.utils.torch_utils import maybe_adjust_dtype_for_device

        dtype = torch.float64 if isinstance(timestep, float) else torch.int64
        dtype = maybe_adjust_dtype_for_device(dtype, sample.device)
        timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
    elif timesteps.ndim == 0:
        timesteps = timesteps[None].to(sample.device)
    frames = sample.shape[2]
    timesteps = timesteps.expand(sample.shape[0])
    t_emb = module.time_proj(timesteps).to(dtype=module_dtype(module))  # time_proj returns float32
    emb = module.time_embedding(t_emb, None)
    return emb.repeat_interleave(frames, dim=0, output_size=emb.shape[0] * frames)


def per_frame(embeds: torch.Tensor, frames: int) -> torch.Tensor:
    """Text embeddings [B, L, D] -> [B*F, L, D]: UNet3D folds frames into the batch."""
    return embeds.repeat_interleave(frames, dim=0, output_size=embeds.shape[0] * frames)


def encode(
    module: torch.nn.Module,
    sample: torch.Tensor,
    emb: torch.Tensor,
    text: torch.Tensor,
    cross_attention_kwargs: Optional[dict] = None,
    after_transformer_in: Optional[torch.Tensor] = None,
) -> tuple[Skips, torch.Tensor]:
    """conv_in -> transformer_in -> down blocks -> mid block of `module` on latents [B, C, F, h, w].

    `emb` and `text` are per frame ([B*F, ...]). `after_transformer_in` [B*F, C0, h, w] is added to the
    features after the first temporal transformer (CAM's E_cond input). Returns (skip features, mid output),
    both frame-folded [B*F, c, h', w'].
    """
    frames = sample.shape[2]
    x = sample.permute(0, 2, 1, 3, 4).reshape((sample.shape[0] * frames, -1) + sample.shape[3:])
    x = module.conv_in(x)
    x = module.transformer_in(x, num_frames=frames, cross_attention_kwargs=cross_attention_kwargs, return_dict=False)[0]
    if after_transformer_in is not None:
        x = x + after_transformer_in
    skips: Skips = (x,)
    for block in module.down_blocks:
        if getattr(block, "has_cross_attention", False):
            x, res = block(hidden_states=x, temb=emb, encoder_hidden_states=text, attention_mask=None,
                           num_frames=frames, cross_attention_kwargs=cross_attention_kwargs)
        else:
            x, res = block(hidden_states=x, temb=emb, num_frames=frames)
        skips += res
    if module.mid_block is not None:
        x = module.mid_block(x, emb, encoder_hidden_states=text, attention_mask=None, num_frames=frames,
                             cross_attention_kwargs=cross_attention_kwargs)
    return skips, x


def decode(
    unet: torch.nn.Module,
    x: torch.Tensor,
    skips: Skips,
    emb: torch.Tensor,
    text: torch.Tensor,
    frames: int,
    forward_upsample_size: bool,
    cross_attention_kwargs: Optional[dict] = None,
) -> torch.Tensor:
    """Up blocks and output head of the UNet: mid output + skips -> noise prediction [B, C, F, h, w]."""
    upsample_size = None
    for i, block in enumerate(unet.up_blocks):
        res = skips[-len(block.resnets):]
        skips = skips[: -len(block.resnets)]
        if i < len(unet.up_blocks) - 1 and forward_upsample_size:
            upsample_size = skips[-1].shape[2:]
        if getattr(block, "has_cross_attention", False):
            x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=text,
                      upsample_size=upsample_size, attention_mask=None, num_frames=frames,
                      cross_attention_kwargs=cross_attention_kwargs)
        else:
            x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size,
                      num_frames=frames)
    if unet.conv_norm_out:
        x = unet.conv_act(unet.conv_norm_out(x))
    x = unet.conv_out(x)
    return x[None, :].reshape((-1, frames) + x.shape[1:]).permute(0, 2, 1, 3, 4)


def unet3d_forward(
    unet: torch.nn.Module,
    sample: torch.Tensor,
    timestep: Any,
    encoder_hidden_states: torch.Tensor,
    merge_skips: Optional[MergeSkips] = None,
    merge_mid: Optional[MergeMid] = None,
    cross_attention_kwargs: Optional[dict] = None,
) -> torch.Tensor:
    """UNet3DConditionModel's forward with hooks on the skip features and the mid-block output.

    sample [B, C, F, h, w], timestep (number, 0-d or [B] tensor), encoder_hidden_states [B, L, D] ->
    noise prediction [B, C, F, h, w] (the ``.sample`` of diffusers' output).
    `merge_skips(skips) -> skips` gets the frame-folded skip features (transformer_in's output first,
    then each down block's, the order the up blocks consume them from the end); `merge_mid(x) -> x` the
    mid-block output [B*F, c, h', w'].
    """
    frames = sample.shape[2]
    forward_upsample_size = any(s % 2 ** unet.num_upsamplers for s in sample.shape[-2:])
    emb = time_embedding(unet, timestep, sample)
    text = per_frame(encoder_hidden_states, frames)
    skips, x = encode(unet, sample, emb, text, cross_attention_kwargs)
    if merge_skips is not None:
        merged = tuple(merge_skips(skips))
        if len(merged) != len(skips):
            raise ValueError(f"merge_skips returned {len(merged)} skip features, the UNet has {len(skips)}")
        skips = merged
    if merge_mid is not None:
        x = merge_mid(x)
    return decode(unet, x, skips, emb, text, frames, forward_upsample_size, cross_attention_kwargs)


def streaming_unet_forward(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    timestep: Any,
    text_embeds: torch.Tensor,
    *,
    cam: Any = None,
    cond_pixels: Optional[torch.Tensor] = None,
    apm: Any = None,
    anchor_tokens: Optional[torch.Tensor] = None,
    cross_attention_kwargs: Optional[dict] = None,
    cam_scale: float = 1.0,
) -> torch.Tensor:
    """The StreamingT2V UNet call: base UNet + CAM (short-term) + APM (long-term memory).

    latents [B, C, F, h, w] (the chunk), text_embeds [B, L, D];
    cam + cond_pixels [B or 1, F_cond, 3, H, W] in [-1, 1]: the last frames of the previous chunk. CAM's
      encoder copy runs on latents[:, :, :F_cond] with the same timestep and the text tokens only; what it adds
      to the UNet's skips and mid is multiplied by `cam_scale` (1: the paper).
    apm + anchor_tokens [B, k, D] (``apm.anchor_tokens(pixels)``): appended to the text of the base UNet,
      whose spatial cross-attention layers mix them in (installed for this call unless already installed).
    Either memory may be left out; with neither this is ``unet3d_forward``. B may be a CFG batch.
    """
    merge_skips = merge_mid = None
    if cam is not None:
        if cond_pixels is None:
            raise ValueError("CAM needs cond_pixels: the conditioning frames [B, F_cond, 3, H, W]")
        feats = cam.features(latents[:, :, : cond_pixels.shape[1]], timestep, text_embeds, cond_pixels)
        merge_skips = lambda skips: cam.merge_skips(skips, feats, cam_scale)  # noqa: E731
        merge_mid = lambda x: cam.merge_mid(x, feats, cam_scale)  # noqa: E731
    if apm is None:
        return unet3d_forward(unet, latents, timestep, text_embeds, merge_skips, merge_mid, cross_attention_kwargs)
    if anchor_tokens is None:
        raise ValueError("APM needs anchor_tokens: apm.anchor_tokens(anchor_pixels) or apm.null_tokens(...)")
    embeds = apm.append(text_embeds, anchor_tokens)
    with apm.installed(unet):
        return unet3d_forward(unet, latents, timestep, embeds, merge_skips, merge_mid, cross_attention_kwargs)
