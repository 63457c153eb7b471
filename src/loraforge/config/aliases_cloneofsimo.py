"""The flags of cloneofsimo/lora (`lora_diffusion`): its `lora_pti` command (pivotal tuning, python-fire flags) and
`training_scripts/train_lora_dreambooth.py` (argparse, diffusers-like), and the loraforge key each one becomes.

Rows for the alias table in `aliases.py` (which adds them to `ALIASES`, after kohya's and diffusers', so a name the
peers share keeps their hint), in its format: (flag, key, kind, note). Data only: imports nothing from loraforge.
"""

from __future__ import annotations

CLONEOFSIMO = "cloneofsimo"  # lora_pti, train_lora_dreambooth.py
PTI = "lora_pti"
DREAMBOOTH = "train_lora_dreambooth.py"
CLONEOFSIMO_SCRIPTS = {PTI: "auto", DREAMBOOTH: "auto"}  # script -> model.family

# cloneofsimo's module classes (lora_unet_target_modules / lora_clip_target_modules) -> loraforge's module suffixes:
# every nn.Linear inside a module of that class gets an adapter.
UNET_CLASSES = {
    "CrossAttention": ["to_q", "to_k", "to_v", "to_out.0"],
    "Attention": ["to_q", "to_k", "to_v", "to_out.0"],
    "GEGLU": ["ff.net.0.proj"],
    "FeedForward": ["ff.net.0.proj", "ff.net.2"],
}
CLIP_CLASSES = {"CLIPAttention": ["q_proj", "k_proj", "v_proj", "out_proj"], "CLIPMLP": ["fc1", "fc2"]}
UNET_DEFAULT_CLASSES = ("CrossAttention", "Attention", "GEGLU")  # both scripts' UNet default
# lora_pti's --use_template: loraforge's fixed prompt for each (cloneofsimo draws one of ~20 templates per sample)
TEMPLATES = {"object": "a photo of a {}", "style": "a painting in the style of {}"}

_LORA_PTI_DEFAULTS: dict[str, object] = {
    "train_text_encoder": True,
    "lora_rank": 4,
    "color_jitter": True,
    "cached_latents": True,
    "gradient_accumulation_steps": 4,
    "learning_rate_unet": 1e-4,
    "learning_rate_text": 1e-5,
    "learning_rate_ti": 5e-4,
    "lr_scheduler": "linear",
    "save_steps": 100,
    "weight_decay_lora": 0.001,
    "weight_decay_ti": 0.0,
}
_DREAMBOOTH_DEFAULTS: dict[str, object] = {
    "lora_rank": 4,
    "train_batch_size": 4,
    "learning_rate_text": 5e-6,
    "lr_warmup_steps": 500,
    "save_steps": 500,
}
CLONEOFSIMO_DEFAULTS: dict[str, dict[str, object]] = {PTI: _LORA_PTI_DEFAULTS, DREAMBOOTH: _DREAMBOOTH_DEFAULTS}

_TWO_PHASES = ("lora_pti's two phases are one run in loraforge: max_train_steps = max_train_steps_ti + "
               "max_train_steps_tuning")
_NO_MASK = "no masked loss (loraforge weighs every pixel alike)"
_ONE_SCHEDULE = "one learning-rate schedule spans both phases in loraforge: --lr_scheduler / --lr_warmup_steps"
_NO_RESUME = "training cannot start from an existing LoRA file"


def cloneofsimo_rows(same: str, differs: str, builtin: str, none: str) -> list[tuple]:
    """(flag, key, kind, note) for every flag of lora_pti and train_lora_dreambooth.py."""
    return [
        # ------------------------------------------------------------------------------------------ model
        ("pretrained_model_name_or_path", "model.pretrained_model_name_or_path", same, ""),
        ("pretrained_vae_name_or_path", "model.vae", same, ""),
        ("revision", "model.revision", same, ""),
        ("tokenizer_name", None, none, "the tokenizer always comes with the model"),
        ("train_inpainting", None, none, "no inpainting training"),
        ("device", None, none, "loraforge trains on the first GPU it finds: pick one with CUDA_VISIBLE_DEVICES"),
        ("mixed_precision", "training.mixed_precision", same,
         "train_lora_dreambooth.py takes accelerate's when not given; lora_pti has no such flag and trains in fp32 "
         "(the import writes 'no'; 'auto' picks bf16 or fp16 on a GPU and is faster)"),
        ("enable_xformers_memory_efficient_attention", "training.attention", same,
         "becomes training.attention = 'xformers' (where the package is installed)"),
        ("use_xformers", "training.attention", same,
         "becomes training.attention = 'xformers' (where the package is installed)"),
        # ------------------------------------------------------------------------------------------ images, captions
        ("instance_data_dir", "dataset.instance_dir", differs,
         "lora_pti captions each image with its file name (up to the first '.'), replacing 'DUMMY' (or the "
         "--placeholder_token_at_data word) with the tokens; loraforge reads .txt captions next to the images (or "
         "dataset.instance_prompt for every image without one): write the file names into .txt files "
         "(train_lora_dreambooth.py: the same, --instance_prompt for every image)"),
        ("instance_prompt", "dataset.instance_prompt", same, ""),
        ("use_template", "dataset.instance_prompt", differs,
         "lora_pti draws one of ~20 'object' or 'style' templates per sample and ignores the captions; loraforge "
         "uses one prompt ('a photo of a TOK' / 'a painting in the style of TOK') for every image without a "
         ".txt caption"),
        ("use_mask_captioned_data", None, none,
         f"{_NO_MASK}; its caption.txt captions: write one .txt caption per image"),
        ("use_face_segmentation_condition", None, none, _NO_MASK),
        ("mask_temperature", None, none, _NO_MASK),
        ("class_data_dir", "dataset.class_data_dir", same, ""),
        ("class_prompt", "dataset.class_prompt", same, ""),
        ("with_prior_preservation", "dataset.with_prior_preservation", differs,
         "train_lora_dreambooth.py puts instance and class images in every batch, as diffusers does: imported with "
         "dataset.prior_batches = \"paired\", which does the same"),
        ("prior_loss_weight", "dataset.prior_loss_weight", same, ""),
        ("num_class_images", "dataset.num_class_images", same, ""),
        ("sample_batch_size", None, none,
         "lora_pti does not use it; train_lora_dreambooth.py generates class images in batches of it, loraforge "
         "with its own batch size"),
        ("resolution", "dataset.resolution", same, ""),
        ("resize", None, builtin, "images are always resized to cover the training size"),
        ("center_crop", "dataset.center_crop", same,
         "without it train_lora_dreambooth.py does not crop (square images assumed); loraforge's default is a "
         "center crop, as lora_pti's"),
        ("color_jitter", "dataset.color_aug", differs,
         "cloneofsimo's torchvision ColorJitter (brightness and contrast ±10-20%) becomes kohya's colour "
         "augmentation (a hue shift or gamma on a third of the samples); loraforge refuses it with "
         "dataset.cache_latents, lora_pti's default, so the import drops it then (lora_pti jitters each image once, "
         "before caching)"),
        ("cached_latents", "dataset.cache_latents", same, ""),
        # ------------------------------------------------------------------------------------------ network
        ("lora_rank", "network.rank", same,
         "cloneofsimo has no alpha (scale 1): loraforge's network.alpha, unset, equals the rank, the same scale"),
        ("lora_scale", "network.alpha", differs,
         "lora_pti multiplies the UNet's LoRA by it while training: written as network.alpha = lora_scale × rank, "
         "which scales the text encoder's LoRA too"),
        ("lora_dropout_p", "network.dropout", differs,
         "lora_pti applies it to the UNet's LoRA only, loraforge to the text encoder's as well"),
        ("lora_unet_target_modules", "network.target_modules", differs,
         "cloneofsimo names module classes, every linear layer inside them gets a LoRA: CrossAttention / Attention "
         "become to_q, to_k, to_v, to_out.0 and GEGLU ff.net.0.proj (its default set, also "
         "train_lora_dreambooth.py's)"),
        ("lora_clip_target_modules", "network.text_encoder_target_modules", differs,
         "module classes: CLIPAttention becomes q_proj, k_proj, v_proj, out_proj (the default, loraforge's too), "
         "CLIPMLP fc1, fc2"),
        ("use_extended_lora", None, none,
         "it adds the resnets' convolutions: set network.algo = 'locon' and add 'conv1', 'conv2' to "
         "network.target_modules"),
        ("train_text_encoder", "network.train_text_encoder", same, "lora_pti's default is true, loraforge's false"),
        ("resume_unet", None, none, _NO_RESUME),
        ("resume_text_encoder", None, none, _NO_RESUME),
        # ------------------------------------------------------------------------------------------ pivotal tuning
        ("perform_inversion", "training.train_text_encoder_ti", differs,
         "true (lora_pti's default) becomes phased pivotal tuning: training.train_text_encoder_ti = true with "
         "training.ti_steps = max_train_steps_ti; without --placeholder_tokens lora_pti has no token to learn and "
         "the import trains the LoRA alone"),
        ("placeholder_tokens", "training.token_names", same, "`\"<s1>|<s2>\"` becomes [\"<s1>\", \"<s2>\"]"),
        ("placeholder_token_at_data", "training.token_abstraction", differs,
         "`\"<krk>|<s1><s2>\"`: the word before the '|' becomes the placeholder the tokens replace in captions; "
         "the tokens are always all of --placeholder_tokens"),
        ("initializer_tokens", "training.initializer_token", differs,
         "loraforge starts every new token from one word: with several ('dog|cat') the first is used; "
         "'<rand-0.017>' (lora_pti's default) is a random start, loraforge's too when unset"),
        ("proxy_token", None, builtin, "lora_pti does not use it"),
        ("max_train_steps_ti", "training.ti_steps", same,
         "the first N steps train the new embeddings alone (at optimizer.embedding_lr); " + _TWO_PHASES),
        ("max_train_steps_tuning", "training.max_train_steps", differs, _TWO_PHASES),
        ("learning_rate_ti", "optimizer.embedding_lr", same, ""),
        ("weight_decay_ti", "optimizer.adam_weight_decay_text_encoder", differs,
         "loraforge applies it to the text encoder's LoRA as well (lora_pti: weight_decay_lora there)"),
        ("clip_ti_decay", None, none,
         "lora_pti pulls the new embeddings' norm towards 0.4 after each inversion step; loraforge does not "
         "(optimizer.adam_weight_decay_text_encoder decays them)"),
        ("continue_inversion", None, none,
         "the embeddings stop training after training.ti_steps; to train them together with a UNet-only LoRA "
         "(network.train_text_encoder = false), leave ti_steps unset (training.train_text_encoder_ti_frac of the "
         "run)"),
        ("continue_inversion_lr", None, none, "see continue_inversion"),
        # ------------------------------------------------------------------------------------------ optimizer
        ("learning_rate", "optimizer.learning_rate", same, ""),
        ("learning_rate_unet", "optimizer.unet_lr", same, ""),
        ("learning_rate_text", "optimizer.text_encoder_lr", same, ""),
        ("scale_lr", "optimizer.learning_rate", differs,
         "the import multiplies the learning rates by train_batch_size × gradient_accumulation_steps, as lora_pti "
         "does (train_lora_dreambooth.py also by the number of GPUs: scale by hand for several)"),
        ("lr_scheduler", "optimizer.lr_scheduler", differs,
         "lora_pti's schedule of the inversion phase; " + _ONE_SCHEDULE + " (train_lora_dreambooth.py: the same)"),
        ("lr_warmup_steps", "optimizer.lr_warmup_steps", same, ""),
        ("lr_scheduler_lora", None, none, _ONE_SCHEDULE),
        ("lr_warmup_steps_lora", None, none, _ONE_SCHEDULE),
        ("weight_decay_lora", "optimizer.adam_weight_decay", differs,
         "lora_pti applies it to the text encoder's LoRA too; loraforge uses adam_weight_decay_text_encoder there "
         "(weight_decay_ti)"),
        ("use_8bit_adam", "optimizer.type", same, "becomes optimizer.type = 'adamw8bit'"),
        ("adam_beta1", "optimizer.adam_beta1", same, ""),
        ("adam_beta2", "optimizer.adam_beta2", same, ""),
        ("adam_epsilon", "optimizer.adam_epsilon", same, ""),
        ("adam_weight_decay", "optimizer.adam_weight_decay", same, ""),
        ("max_grad_norm", "optimizer.max_grad_norm", same, ""),
        # ------------------------------------------------------------------------------------------ steps
        ("train_batch_size", "training.batch_size", same, ""),
        ("gradient_accumulation_steps", "training.gradient_accumulation_steps", differs,
         "lora_pti accumulates in the inversion phase only, loraforge in every step (train_lora_dreambooth.py: the "
         "same)"),
        ("gradient_checkpointing", "training.gradient_checkpointing", same, ""),
        ("max_train_steps", "training.max_train_steps", same, ""),
        ("num_train_epochs", "training.num_train_epochs", same, ""),
        ("seed", "training.seed", same,
         "train_lora_dreambooth.py draws a random seed when it is not given; lora_pti's default is 42, as loraforge's"),
        ("save_steps", "training.save_every_n_steps", differs,
         "cloneofsimo writes a LoRA file every N steps, loraforge a checkpoint folder (LoRA and training state)"),
        ("local_rank", None, builtin, "accelerate sets it"),
        # ------------------------------------------------------------------------------------------ output
        ("output_dir", "output.output_dir", differs,
         "cloneofsimo writes into output_dir itself, loraforge into output_dir/output_name/"),
        ("out_name", None, none, "the LoRA file is named after output.output_name (the last folder of --output_dir)"),
        ("output_format", None, builtin,
         "LoRA files are always safetensors (kohya and diffusers layouts); `loraforge convert` reads "
         "cloneofsimo's .pt and safeloras files"),
        ("logging_dir", "output.logging_dir", differs, "train_lora_dreambooth.py puts it inside --output_dir"),
        ("log_wandb", "output.log_with", same,
         "becomes output.log_with = 'wandb' (the optional extra: pip install 'loraforge[wandb]')"),
        ("wandb_log_prompt_cnt", None, none, "set sampling.validation_prompt to see samples in the tracker"),
        ("wandb_project_name", None, none, "the tracker's project is always 'loraforge'"),
        ("wandb_entity", None, none, "set the WANDB_ENTITY environment variable"),
        ("extra_args", None, none, "the resolved config is saved in the run folder"),
        ("push_to_hub", None, none, "upload the run folder yourself (huggingface-cli upload)"),
        ("hub_token", None, none, "upload the run folder yourself (huggingface-cli upload)"),
    ]
