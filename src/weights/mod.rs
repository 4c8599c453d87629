//! Weight files: torch.save (zip and legacy) through a restricted unpickler, safetensors, tch .ot; strict loading.
