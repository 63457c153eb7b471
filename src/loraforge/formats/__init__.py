"""Every file layout loraforge reads or writes: kohya/LyCORIS, diffusers/PEFT, embeddings, single-file checkpoints,
and the consumer rules (A1111, ComfyUI, diffusers) files are checked against."""
