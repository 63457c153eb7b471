"""The flags of kohya sd-scripts, the diffusers training scripts and cloneofsimo/lora, and the loraforge key each one
becomes.

One table serves two purposes: the config error messages ("kohya's --network_dim is network.rank") and
`loraforge import`, which turns a pasted kohya, diffusers or cloneofsimo command line into a loraforge config.
`docs/import.md` is generated from it (a test fails when it is stale), so what the docs, the errors and the importer
say cannot drift apart.

Each entry says how the flag relates to loraforge:

- `same`: the key does what the flag does;
- `differs`: the key is the nearest equivalent, and `note` says how the meaning differs (the importer lists it);
- `builtin`: nothing to set, loraforge always behaves that way (`note` says how);
- `none`: loraforge has no equivalent (`note` says what to do instead);
- `expands`: the flag holds other flags (`--network_args`, `--optimizer_args`, `--config_file`), each mapped on its own.

Flag names are written without the leading dashes, as argparse spells them (underscores). The flag names come from
the seed guides' command lines (seed-practices.md §16) and the scripts' argument lists (kohya.md §1, diffusers.md
§1-2); cloneofsimo's rows (`lora_pti`, `train_lora_dreambooth.py`) are kept in `aliases_cloneofsimo.py`. This module
is data only: it imports nothing from loraforge but that data.
"""

from __future__ import annotations

from dataclasses import dataclass

from .aliases_cloneofsimo import CLONEOFSIMO, cloneofsimo_rows

KOHYA = "kohya"  # train_network.py, sdxl_train_network.py (and their --config_file TOML)
DIFFUSERS = "diffusers"  # train_dreambooth_lora*.py, train_text_to_image_lora*.py
NETWORK_ARGS = "kohya network_args"  # `--network_args key=value ...` of networks.lora and lycoris.kohya
OPTIMIZER_ARGS = "kohya optimizer_args"  # `--optimizer_args key=value ...`
ACCELERATE = "accelerate launch"  # the launcher's own options, before the script

TOOL_NAMES = {KOHYA: "kohya", DIFFUSERS: "diffusers", CLONEOFSIMO: "cloneofsimo", NETWORK_ARGS: "kohya network_args",
              OPTIMIZER_ARGS: "kohya optimizer_args", ACCELERATE: "accelerate launch"}


@dataclass(frozen=True)
class Alias:
    flag: str
    key: str | None  # "section.key"; None for `builtin` and `none`
    tools: tuple[str, ...]
    kind: str = "same"  # same | differs | builtin | none | expands
    note: str = ""


_K, _D, _KD = (KOHYA,), (DIFFUSERS,), (KOHYA, DIFFUSERS)
_NA, _OA, _A = (NETWORK_ARGS,), (OPTIMIZER_ARGS,), (ACCELERATE,)

_NOT_RESUMABLE = (
    "only `latest` or a loraforge checkpoint folder can be resumed; a kohya state folder or a diffusers "
    "checkpoint-N folder cannot"
)
_LAUNCH = "an option of the launcher: run `accelerate launch [its options] -m loraforge train CONFIG.toml`"


def _entries() -> list[Alias]:
    same, differs, builtin, none = "same", "differs", "builtin", "none"
    rows: list[tuple] = [
        # ------------------------------------------------------------------------------------------ model
        ("pretrained_model_name_or_path", "model.pretrained_model_name_or_path", _KD, same, ""),
        ("pretrained_vae_model_name_or_path", "model.vae", _D, same, ""),
        ("vae", "model.vae", _K, same, ""),
        ("clip_l", "model.clip_l", _K, same, "flux_train_network.py: the CLIP-L file next to a FLUX transformer file"),
        ("t5xxl", "model.t5xxl", _K, same, "flux_train_network.py: the T5-XXL file next to a FLUX transformer file"),
        ("ae", "model.ae", _K, same, "flux_train_network.py: the autoencoder file next to a FLUX transformer file"),
        ("revision", "model.revision", _D, same, ""),
        ("variant", "model.variant", _D, same, ""),
        ("v2", "model.family", _K, same, "`--v2` becomes model.family = 'sd2' (loraforge also detects it)"),
        ("v_parameterization", "model.prediction_type", _K, same,
         "`--v_parameterization` becomes model.prediction_type = 'v_prediction' (`auto` reads the scheduler config)"),
        ("prediction_type", "model.prediction_type", _D, same, ""),
        ("cache_dir", None, _D, none, "the hub download cache: set the HF_HOME environment variable"),
        ("tokenizer_cache_dir", None, _K, none,
         "tokenizers come with the model (or model.config_dir); set HF_HOME for the hub cache"),
        ("tokenizer_name", None, _D, none, "the tokenizer always comes with the model"),
        ("lowram", None, _K, builtin,
         "kohya's --lowram loads the model straight onto the GPU for machines with less RAM than VRAM (Colab); "
         "loraforge loads through diffusers' from_pretrained / from_single_file (low-CPU-memory loading: the "
         "weights are read once, without a random init) and then moves each part to the device in its training "
         "precision; there is no option to set"),
        ("highvram", None, _K, none, "no equivalent option"),
        ("sdpa", "training.attention", _K, same, "`--sdpa` becomes training.attention = 'sdpa' (loraforge's default)"),
        ("xformers", "training.attention", _K, same,
         "`--xformers` becomes training.attention = 'xformers' (where the package is installed)"),
        ("mem_eff_attn", "training.attention", _K, differs,
         "kohya's own memory-efficient attention: loraforge's nearest is PyTorch's SDPA, training.attention = 'sdpa'"),
        ("enable_xformers_memory_efficient_attention", "training.attention", _D, same,
         "becomes training.attention = 'xformers' (where the package is installed)"),
        ("torch_compile", "training.torch_compile", _K, differs,
         "kohya hands the whole prepared U-Net and network to accelerate's dynamo; loraforge compiles each U-Net "
         "transformer block (regional compilation, a shorter compile), with TorchInductor"),
        ("dynamo_backend", None, _K, builtin,
         "loraforge's training.torch_compile always uses TorchInductor (`inductor`, kohya's default); another "
         "backend has no equivalent"),
        ("allow_tf32", None, _D, none, "no equivalent option"),
        ("full_fp16", None, _K, none, "LoRA weights and optimizer states always stay fp32"),
        ("full_bf16", None, _K, none, "LoRA weights and optimizer states always stay fp32"),
        ("fp8_base", "model.quantize_base", _K, differs,
         "`--fp8_base` becomes model.quantize_base = 'fp8': torchao's float8 weight-only storage with a scale per "
         "row (kohya casts the weights to float8 without one); it needs a GPU of compute capability 8.9 or newer "
         "(L4, L40S, RTX 40xx, H100): on an older GPU set 'int8'"),
        ("fp8_base_unet", "model.quantize_base", _K, differs,
         "`--fp8_base_unet` becomes model.quantize_base = 'fp8' (the denoiser only, as in kohya): see --fp8_base"),
        ("blocks_to_swap", "training.blocks_to_swap", _K, same,
         "flux_train_network.py (FLUX.1); loraforge copies the blocks on the compute stream, not overlapped with it "
         "(`loraforge plan` counts the copies' time)"),
        ("mixed_precision", "training.mixed_precision", _KD, same,
         "kohya and diffusers take it from accelerate's config when it is not given (kohya's own default is 'no'); "
         "loraforge's default 'auto' picks bf16 or fp16 on a GPU and fp32 on the CPU"),
        ("no_half_vae", "training.no_half_vae", _K, same, ""),
        ("clip_skip", "training.clip_skip", _K, differs,
         "kohya counts the last layer as 1: its clip_skip N is loraforge's N - 1"),
        ("clip_skip", "training.clip_skip", _D, same, "1 = the penultimate layer, as in diffusers"),
        ("max_token_length", "dataset.max_token_length", _K, same,
         "kohya's chunked prompts, 150 or 225; unset (kohya) is 75, one 77-token window"),
        # ------------------------------------------------------------------------------------------ images
        ("train_data_dir", "dataset.train_data_dir", _K, same, "kohya's `N_name` subfolder layout"),
        ("train_data_dir", "dataset.instance_dir", _D, differs,
         "diffusers reads an ImageFolder (images + metadata.jsonl, subfolders included); loraforge reads the "
         "images of the folder itself with their metadata.jsonl (dataset.metadata_file) or .txt captions"),
        ("reg_data_dir", "dataset.reg_data_dir", _K, same, ""),
        ("dataset_config", "dataset.config_file", _K, same, "the kohya dataset TOML is read as it is"),
        ("in_json", None, _K, none,
         "kohya's fine-tuning metadata: caption the images with sidecar .txt files or a metadata.jsonl"),
        ("dataset_repeats", None, _K, none,
         "kohya applies it to --in_json datasets only; folder repeats come from `N_name` (or dataset.repeats)"),
        ("instance_data_dir", "dataset.instance_dir", _D, same, ""),
        ("dataset_name", "dataset.dataset_name", _D, same, ""),
        ("dataset_config_name", "dataset.dataset_config_name", _D, same, ""),
        ("image_column", "dataset.image_column", _D, same, ""),
        ("caption_column", "dataset.caption_column", _D, same, ""),
        ("instance_prompt", "dataset.instance_prompt", _D, same, ""),
        ("repeats", "dataset.repeats", _D, same, ""),
        ("max_train_samples", None, _D, none, "no equivalent option: use a folder with fewer images"),
        ("with_prior_preservation", "dataset.with_prior_preservation", _D, differs,
         "diffusers puts train_batch_size instance images and as many class images in every batch (loss: instance "
         "mean + prior_loss_weight × class mean); imported with dataset.prior_batches = \"paired\", which does the "
         "same (loraforge's default, \"mixed\", shuffles class images into the batches as kohya does). With "
         "training.snr_gamma, loraforge weights the class images' loss too; diffusers' SDXL script weights the "
         "instance images' only"),
        ("class_data_dir", "dataset.class_data_dir", _D, same, ""),
        ("class_prompt", "dataset.class_prompt", _D, same, ""),
        ("num_class_images", "dataset.num_class_images", _D, same, ""),
        ("prior_loss_weight", "dataset.prior_loss_weight", _KD, same, ""),
        ("prior_generation_precision", None, _D, none,
         "class images are generated with the loaded model, in its training precision"),
        ("resolution", "dataset.resolution", _K, same,
         "kohya's \"W,H\" becomes [W, H] (one number when W = H)"),
        ("resolution", "dataset.resolution", _D, same, ""),
        ("center_crop", "dataset.center_crop", _D, same,
         "diffusers crops at random unless --center_crop is given; loraforge's default is a center crop"),
        ("random_crop", "dataset.center_crop", _K, same, "`--random_crop` becomes dataset.center_crop = false"),
        ("random_flip", "dataset.random_flip", _D, same, ""),
        ("flip_aug", "dataset.random_flip", _K, same, ""),
        ("color_aug", "dataset.color_aug", _K, same, "kohya's hue shift / gamma, Pillow's HSV standing in for OpenCV's"),
        ("face_crop_aug_range", "dataset.face_crop_aug_range", _K, same,
         "kohya's \"2.0,4.0\" becomes [2.0, 4.0]; the face box comes from the file name (`name_cx_cy_w_h`), as in "
         "kohya; kohya ignores it with --enable_bucket or --cache_latents, which loraforge refuses, so it is "
         "dropped then"),
        ("enable_bucket", "dataset.enable_bucket", _K, same, ""),
        ("min_bucket_reso", "dataset.min_bucket_reso", _K, same,
         "kohya's default is 256, loraforge's half the resolution"),
        ("max_bucket_reso", "dataset.max_bucket_reso", _K, same,
         "kohya's default is 1024, loraforge's twice the resolution"),
        ("bucket_reso_steps", "dataset.bucket_reso_steps", _K, same, ""),
        ("bucket_no_upscale", "dataset.bucket_no_upscale", _K, same, ""),
        ("resize_interpolation", None, _K, none, "images are resized with Lanczos"),
        ("image_interpolation_mode", None, _D, none, "images are resized with Lanczos"),
        ("alpha_mask", "dataset.alpha_mask", _K, same, ""),
        ("masked_loss", "training.masked_loss", _K, same, ""),
        ("conditioning_data_dir", "dataset.mask_dir", _K, same, "the masks of --masked_loss (red channel)"),
        ("debug_dataset", None, _K, none, "use `loraforge train CONFIG --dry-run` to check every image"),
        # ------------------------------------------------------------------------------------------ captions
        ("caption_extension", "dataset.caption_extension", _K, same,
         "kohya's default is .caption, loraforge's .txt"),
        ("shuffle_caption", "dataset.shuffle_caption", _K, same, ""),
        ("caption_separator", "dataset.caption_separator", _K, same, ""),
        ("keep_tokens", "dataset.keep_tokens", _K, same, ""),
        ("keep_tokens_separator", "dataset.keep_tokens_separator", _K, same, ""),
        ("secondary_separator", "dataset.secondary_separator", _K, same, ""),
        ("enable_wildcard", "dataset.enable_wildcard", _K, same, ""),
        ("caption_prefix", "dataset.caption_prefix", _K, same, ""),
        ("caption_suffix", "dataset.caption_suffix", _K, same, ""),
        ("caption_dropout_rate", "dataset.caption_dropout_rate", _K, same, ""),
        ("caption_dropout_every_n_epochs", "dataset.caption_dropout_every_n_epochs", _K, same, ""),
        ("caption_tag_dropout_rate", "dataset.caption_tag_dropout_rate", _K, same, ""),
        ("token_warmup_min", None, _K, none, "no caption token warm-up"),
        ("token_warmup_step", None, _K, none, "no caption token warm-up"),
        ("weighted_captions", None, _K, none, "captions are not weighted ((tag:1.3) is plain text)"),
        # ------------------------------------------------------------------------------------------ caches
        ("cache_latents", "dataset.cache_latents", _KD, same, ""),
        ("cache_latents_to_disk", "dataset.cache_latents_to_disk", _K, same, ""),
        ("cache_text_encoder_outputs", "dataset.cache_text_encoder_outputs", _K, same, ""),
        ("cache_text_encoder_outputs_to_disk", "dataset.cache_text_encoder_outputs_to_disk", _K, same, ""),
        ("pre_compute_text_embeddings", "dataset.cache_text_encoder_outputs", _D, same, ""),
        ("vae_batch_size", "dataset.vae_batch_size", _K, same, ""),
        ("max_data_loader_n_workers", "training.dataloader_num_workers", _K, same, ""),
        ("dataloader_num_workers", "training.dataloader_num_workers", _D, same, ""),
        ("persistent_data_loader_workers", None, _K, none, "no equivalent option"),
        # ------------------------------------------------------------------------------------------ network
        ("network_module", "network.algo", _K, differs,
         "networks.lora becomes algo 'lora' with preset 'attn-mlp' (kohya's targets: every linear layer of the "
         "transformer blocks and the text encoders' attention and MLP; loraforge's own default is attention only); "
         "with conv_dim it becomes 'locon' with preset 'full' (which adds conv_in/conv_out and the time embeddings "
         "to kohya's C3Lier set). lycoris.kohya takes algo and preset from --network_args (LyCORIS' defaults: "
         "'lora', which is loraforge's 'locon', and 'full')"),
        ("network_dim", "network.rank", _K, same,
         "kohya's default is 4, loraforge's 16"),
        ("network_alpha", "network.alpha", _K, same,
         "kohya's default is 1 (scale 1/rank), loraforge's the rank (scale 1)"),
        ("network_dropout", "network.dropout", _K, same, ""),
        ("network_args", None, _K, "expands", "each key=value is mapped on its own (see the network_args table)"),
        ("network_weights", None, _K, none, "training cannot start from an existing LoRA file"),
        ("dim_from_weights", None, _K, none, "training cannot start from an existing LoRA file"),
        ("network_train_unet_only", "network.train_text_encoder", _K, same,
         "kohya trains the text encoder(s) too unless this flag is given; loraforge only with "
         "network.train_text_encoder = true"),
        ("network_train_text_encoder_only", None, _K, none, "the UNet always trains"),
        ("base_weights", None, _K, none,
         "bake the LoRA into the model first (`loraforge merge into-model`) and train on the result"),
        ("base_weights_multiplier", None, _K, none, "see base_weights"),
        ("rank", "network.rank", _D, same,
         "diffusers' default is 4, loraforge's 16"),
        ("lora_dropout", "network.dropout", _D, same, ""),
        ("use_dora", "network.algo", _D, differs,
         "becomes algo 'dora' on LyCORIS modules; diffusers (peft) keeps one magnitude per output row, loraforge "
         "per input column by default (network.dora_axis = 'output' for peft's axis; ComfyUI mis-merges it)"),
        ("train_text_encoder", "network.train_text_encoder", _D, same, ""),
        ("train_text_encoder_frac", "training.train_text_encoder_frac", _D, same, ""),
        ("lora_unet_blocks", None, _D, none, "use network.block_dims (0 removes a block)"),
        ("use_blora", None, _D, none, "use network.block_dims (0 removes a block)"),
        ("output_kohya_format", None, _D, builtin, "the kohya file is always written (output.write_kohya)"),
        ("scale_weight_norms", "optimizer.scale_weight_norms", _K, same, "every algo, LoRA and LyCORIS"),
        # ------------------------------------------------------------------------------------------ optimizer
        ("optimizer_type", "optimizer.type", _K, same,
         "AdamW, AdamW8bit, Adafactor, Prodigy and SGD map (any case), and so does a class by import path "
         "(`torch.optim.RAdam`); the other kohya names (Lion, DAdapt*) have no equivalent: write their class's "
         "path. kohya's Adafactor defaults to relative_step = true, loraforge's to false"),
        ("optimizer", "optimizer.type", _D, same, "adamW / AdamW / prodigy, any case"),
        ("use_8bit_adam", "optimizer.type", _KD, same, "becomes optimizer.type = 'adamw8bit'"),
        ("use_lion_optimizer", None, _K, none, "no Lion optimizer"),
        ("optimizer_args", None, _K, "expands",
         "each key=value is mapped on its own (see the optimizer_args table); the others, and all of them with a "
         "class given by import path, go to optimizer.optimizer_args"),
        ("learning_rate", "optimizer.learning_rate", _KD, same,
         "defaults: kohya 2e-6, diffusers' train_dreambooth_lora.py 5e-4, loraforge and the other diffusers "
         "scripts 1e-4"),
        ("unet_lr", "optimizer.unet_lr", _K, same, ""),
        ("text_encoder_lr", "optimizer.text_encoder_lr", _KD, same,
         "kohya takes one value per text encoder; loraforge one for both (the first is used). It only matters when "
         "a text encoder or new token embeddings train"),
        ("lr_scheduler", "optimizer.lr_scheduler", _KD, same, ""),
        ("lr_warmup_steps", "optimizer.lr_warmup_steps", _KD, same,
         "diffusers' default is 500 steps, loraforge's 0; kohya's ratio form (0.1 = 10 % of the steps) becomes a "
         "step count"),
        ("lr_scheduler_num_cycles", "optimizer.lr_num_cycles", _K, same, ""),
        ("lr_num_cycles", "optimizer.lr_num_cycles", _D, same, ""),
        ("lr_scheduler_power", "optimizer.lr_power", _K, same, ""),
        ("lr_power", "optimizer.lr_power", _D, same, ""),
        ("lr_scheduler_type", None, _K, none, "only the named schedules of optimizer.lr_scheduler"),
        ("lr_scheduler_args", None, _K, none, "only the named schedules of optimizer.lr_scheduler"),
        ("lr_decay_steps", None, _K, none, "no decay-steps schedule"),
        ("lr_scheduler_min_lr_ratio", None, _K, none, "no minimum-lr schedule"),
        ("lr_scheduler_timescale", None, _K, none, "no inverse-sqrt schedule"),
        ("scale_lr", None, _D, none, "write the scaled learning rate yourself"),
        ("adam_beta1", "optimizer.adam_beta1", _D, same, ""),
        ("adam_beta2", "optimizer.adam_beta2", _D, same, ""),
        ("adam_epsilon", "optimizer.adam_epsilon", _D, same, ""),
        ("adam_weight_decay", "optimizer.adam_weight_decay", _D, same,
         "default 1e-4 in the diffusers SDXL DreamBooth scripts, 1e-2 in the others and loraforge"),
        ("adam_weight_decay_text_encoder", "optimizer.adam_weight_decay_text_encoder", _D, same, ""),
        ("prodigy_beta3", "optimizer.prodigy_beta3", _D, same, ""),
        ("prodigy_decouple", "optimizer.prodigy_decouple", _D, differs,
         "diffusers declares it type=bool, so any value, even False, means true there"),
        ("prodigy_use_bias_correction", "optimizer.prodigy_use_bias_correction", _D, differs,
         "diffusers declares it type=bool, so any value, even False, means true there"),
        ("prodigy_safeguard_warmup", "optimizer.prodigy_safeguard_warmup", _D, differs,
         "diffusers declares it type=bool, so any value, even False, means true there"),
        ("max_grad_norm", "optimizer.max_grad_norm", _KD, same,
         "kohya turns clipping off with 0; loraforge clips unless the key is unset, which a TOML file cannot write"),
        # ------------------------------------------------------------------------------------------ loss and noise
        ("snr_gamma", "training.snr_gamma", _D, differs,
         "for v-prediction the diffusers DreamBooth SDXL scripts weight min(SNR, γ)/SNR + 1; loraforge "
         "min(SNR, γ)/(SNR + 1), the paper's form (same for epsilon)"),
        ("min_snr_gamma", "training.snr_gamma", _K, same, ""),
        ("noise_offset", "training.noise_offset", _KD, same, ""),
        ("multires_noise_iterations", "training.multires_noise_iterations", _K, same, ""),
        ("multires_noise_discount", "training.multires_noise_discount", _K, same, ""),
        ("noise_offset_random_strength", None, _K, none, "no random noise-offset strength"),
        ("adaptive_noise_scale", None, _K, none, "no adaptive noise scale"),
        ("ip_noise_gamma", "training.ip_noise_gamma", _K, same, ""),
        ("ip_noise_gamma_random_strength", "training.ip_noise_gamma_random_strength", _K, same, ""),
        ("zero_terminal_snr", "training.zero_terminal_snr", _K, differs,
         "kohya only warns on an epsilon-prediction model; loraforge refuses it"),
        ("min_timestep", "training.min_timestep", _K, same, ""),
        ("max_timestep", "training.max_timestep", _K, same, ""),
        ("loss_type", "training.loss_type", _K, same, ""),
        ("huber_c", "training.huber_c", _K, same, ""),
        ("huber_schedule", "training.huber_schedule", _K, same, ""),
        ("huber_scale", "training.huber_scale", _K, same, ""),
        ("debiased_estimation_loss", "training.debiased_estimation_loss", _K, same, ""),
        ("scale_v_pred_loss_like_noise_pred", "training.scale_v_pred_loss_like_noise_pred", _K, same, ""),
        ("v_pred_like_loss", None, _K, none, "no v-prediction-like loss"),
        ("do_edm_style_training", None, _D, none, "no EDM training"),
        # ------------------------------------------------------------------------------------------ the loop
        ("train_batch_size", "training.batch_size", _KD, same,
         "diffusers' defaults are 4 (DreamBooth) and 16 (text-to-image), loraforge's 1"),
        ("max_train_steps", "training.max_train_steps", _KD, same,
         "diffusers: it overrides --num_train_epochs; kohya: --max_train_epochs wins over it, and kohya's default "
         "is 1600 steps (loraforge's 1000); loraforge stops at whichever comes first"),
        ("max_train_epochs", "training.num_train_epochs", _K, same,
         "it wins over --max_train_steps in kohya; loraforge stops at whichever comes first"),
        ("num_train_epochs", "training.num_train_epochs", _D, same,
         "--max_train_steps overrides it in diffusers; loraforge stops at whichever comes first"),
        ("gradient_accumulation_steps", "training.gradient_accumulation_steps", _KD, same, ""),
        ("gradient_checkpointing", "training.gradient_checkpointing", _KD, same, ""),
        ("seed", "training.seed", _KD, same,
         "kohya and diffusers draw a random seed when it is not given; loraforge's default is 42"),
        ("save_every_n_steps", "training.save_every_n_steps", _K, same, ""),
        ("save_every_n_epochs", "training.save_every_n_epochs", _K, same, ""),
        ("save_last_n_steps", "training.save_last_n_steps", _K, same, ""),
        ("save_last_n_epochs", "training.save_last_n_epochs", _K, same, ""),
        ("save_n_epoch_ratio", None, _K, none, "use training.save_every_n_epochs"),
        ("save_state", None, _K, builtin, "every loraforge checkpoint holds the optimizer, scheduler and RNG state"),
        ("save_state_on_train_end", None, _K, builtin,
         "every loraforge checkpoint holds the optimizer, scheduler and RNG state"),
        ("save_last_n_epochs_state", None, _K, builtin, "checkpoints and states are the same folders"),
        ("save_last_n_steps_state", None, _K, builtin, "checkpoints and states are the same folders"),
        ("checkpointing_steps", "training.save_every_n_steps", _D, same,
         "diffusers' default is 500; loraforge writes no checkpoints unless asked"),
        ("checkpoints_total_limit", "training.save_last_n_steps", _D, differs,
         "a number of checkpoints becomes a number of steps: limit × checkpointing_steps"),
        ("resume", "training.resume", _K, differs, _NOT_RESUMABLE),
        ("resume_from_checkpoint", "training.resume", _D, differs, _NOT_RESUMABLE),
        ("initial_epoch", None, _K, none, "resume from a checkpoint instead"),
        ("initial_step", None, _K, none, "resume from a checkpoint instead"),
        ("skip_until_initial_step", None, _K, none, "resume from a checkpoint instead"),
        # ------------------------------------------------------------------------------------------ FLUX.1
        # (the timestep flags, kohya's --timestep_sampling / --discrete_flow_shift / --model_prediction_type and
        # --weighting_scheme, mean something only together: config/import_flux.py translates them)
        ("timestep_sampling", "training.timestep_sampling", _K, differs,
         "read with --discrete_flow_shift and --weighting_scheme: sigma (kohya's default) becomes uniform + "
         "training.flow_shift, shift sigmoid + flow_shift, flux_shift sigmoid + training.flow_resolution_shift"),
        ("discrete_flow_shift", "training.flow_shift", _K, same,
         "used by kohya with --timestep_sampling sigma (its default) or shift; its default is 3.0"),
        ("weighting_scheme", "training.timestep_sampling", _KD, differs,
         "logit_normal is a timestep density (training.timestep_sampling = 'logit_normal'); sigma_sqrt and cosmap "
         "weight the loss (training.weighting_scheme; kohya only with --model_prediction_type sigma_scaled)"),
        ("model_prediction_type", None, _K, none,
         "loraforge trains the raw flow prediction, kohya's `raw` (its FLUX guide's setting); sigma_scaled (kohya's "
         "default) and additive are not offered"),
        ("mode_scale", None, _KD, none, "loraforge has no 'mode' timestep density"),
        ("guidance_scale", "training.guidance_scale", _KD, same,
         "FLUX.1 [dev]'s guidance embedding while training; both scripts' default is 3.5, loraforge's 1.0"),
        ("t5xxl_max_token_length", "model.max_sequence_length", _K, same, ""),
        ("max_sequence_length", "model.max_sequence_length", _D, same, ""),
        ("sigmoid_scale", "training.sigmoid_scale", _K, same, ""),
        ("logit_mean", "training.logit_mean", _KD, same, ""),
        ("logit_std", "training.logit_std", _KD, same, ""),
        ("apply_t5_attn_mask", None, _K, none,
         "loraforge conditions as diffusers' FluxPipeline does, which attends to T5's padding too"),
        ("text_encoder_batch_size", None, _K, none, "the text-encoder cache encodes in the dataset's batches"),
        ("disable_mmap_load_safetensors", None, _K, builtin, "loraforge reads safetensors files as diffusers does"),
        ("cpu_offload_checkpointing", None, _K, none,
         "checkpointed activations stay on the GPU; training.blocks_to_swap moves the weights instead"),
        # ------------------------------------------------------------------------------------------ pivotal tuning
        ("train_text_encoder_ti", "training.train_text_encoder_ti", _D, same, ""),
        ("enable_t5_ti", "training.train_t5_ti", _D, same, "FLUX (the advanced FLUX script's flag)"),
        ("train_text_encoder_ti_frac", "training.train_text_encoder_ti_frac", _D, differs,
         "diffusers counts it in whole epochs (int(frac × epochs), so with one epoch the embeddings never train); "
         "loraforge in steps"),
        ("token_abstraction", "training.token_abstraction", _D, same, ""),
        ("num_new_tokens_per_abstraction", "training.num_new_tokens_per_abstraction", _D, same, ""),
        ("initializer_token", "training.initializer_token", _D, same, ""),
        # ------------------------------------------------------------------------------------------ sampling
        ("sample_prompts", "sampling.sample_prompts", _K, same, ""),
        ("sample_sampler", "sampling.sample_sampler", _K, same,
         "kohya's default is ddim, loraforge's euler_a"),
        ("sample_every_n_steps", "sampling.sample_every_n_steps", _K, same,
         "kohya ignores it when --sample_every_n_epochs is given; loraforge samples at both"),
        ("sample_every_n_epochs", "sampling.sample_every_n_epochs", _K, same, ""),
        ("sample_at_first", None, _K, none, "no sampling before the first step"),
        ("validation_prompt", "sampling.validation_prompt", _D, same, ""),
        ("num_validation_images", "sampling.num_images_per_prompt", _D, same, ""),
        ("validation_epochs", "sampling.sample_every_n_epochs", _D, same,
         "diffusers samples only when --validation_prompt is given"),
        ("validation_steps", "sampling.sample_every_n_steps", _D, same, ""),
        ("sample_batch_size", "sampling.sample_batch_size", _D, same, ""),
        # ------------------------------------------------------------------------------------------ output
        ("output_dir", "output.output_dir", _K, differs,
         "loraforge writes into output_dir/output_name/ (the kohya file is output_name.safetensors in it)"),
        ("output_dir", "output.output_dir", _D, differs,
         "diffusers writes into output_dir itself, loraforge into output_dir/output_name/"),
        ("output_name", "output.output_name", _K, same, ""),
        ("save_precision", "output.save_precision", _K, same,
         "kohya's 'float' is fp32; not given, kohya saves in the training precision, loraforge in fp32"),
        ("save_model_as", None, _K, builtin,
         "LoRA files are always safetensors (kohya layout and diffusers layout); ckpt/pt are not written"),
        ("log_with", "output.log_with", _K, differs,
         "'tensorboard', 'wandb' (the optional extra: pip install 'loraforge[wandb]') or 'none'; one tracker at a "
         "time, so 'all' becomes 'tensorboard'"),
        ("report_to", "output.log_with", _D, differs,
         "'tensorboard', 'wandb' (the optional extra: pip install 'loraforge[wandb]') or 'none'; comet_ml has no "
         "equivalent, 'all' becomes 'tensorboard'"),
        ("logging_dir", "output.logging_dir", _KD, differs,
         "diffusers puts it inside --output_dir (the importer writes the joined path); unset, loraforge logs into "
         "<run folder>/logs"),
        ("log_prefix", "output.log_prefix", _K, same, ""),
        ("log_tracker_name", None, _K, none, "the tracker's project is always 'loraforge' (output.log_prefix names "
                                             "the run)"),
        ("log_tracker_config", None, _K, none, "no tracker settings file"),
        ("log_config", None, _K, builtin, "the resolved config is saved in the run folder"),
        ("wandb_run_name", None, _K, none, "the wandb run is named after output.output_name (or output.log_prefix and "
                                           "the start time)"),
        ("wandb_api_key", None, _K, none, "run `wandb login` once, or set the WANDB_API_KEY environment variable"),
        ("training_comment", None, _K, none, "no free-text metadata option"),
        ("no_metadata", None, _K, none, "metadata is always written"),
        ("output_config", None, _K, none, "the resolved config is saved in the run folder"),
        ("config_file", None, _K, "expands",
         "a TOML file of kohya's flags; flags on the command line win"),
        ("push_to_hub", None, _D, none, "upload the run folder yourself (huggingface-cli upload)"),
        ("hub_token", None, _D, none, "upload the run folder yourself (huggingface-cli upload)"),
        ("hub_model_id", None, _D, none, "upload the run folder yourself (huggingface-cli upload)"),
        ("local_rank", None, _D, builtin, "accelerate sets it"),
        ("ddp_timeout", None, _K, none, "configure distributed training with `accelerate config`"),
        ("deepspeed", None, _K, none, "no DeepSpeed"),
        ("validation_split", "training.validation_split", _K, differs,
         "kohya splits each dataset apart; loraforge holds out that fraction of all the training images"),
        ("validation_seed", "training.validation_seed", _K, same, ""),
        ("validate_every_n_steps", "training.validate_every_n_steps", _K, same, ""),
        ("validate_every_n_epochs", "training.validate_every_n_epochs", _K, same, ""),
        ("max_validation_steps", None, _K, none, "every held-out image is scored"),
        ("metadata_title", None, _K, none, "no model-spec metadata options"),
        ("metadata_author", None, _K, none, "no model-spec metadata options"),
        # ------------------------------------------------------------------------------------------ network_args
        ("algo", "network.algo", _NA, differs,
         "LyCORIS' 'lora' (with convolutions) is loraforge's 'locon'; 'locon', 'loha', 'lokr' map; the other "
         "LyCORIS algorithms have no equivalent"),
        ("preset", "network.preset", _NA, same, ""),
        ("conv_dim", "network.conv_dim", _NA, same, ""),
        ("conv_alpha", "network.conv_alpha", _NA, same, ""),
        ("use_tucker", "network.use_tucker", _NA, same, ""),
        ("use_scalar", "network.use_scalar", _NA, same, ""),
        ("dropout", "network.dropout", _NA, same, ""),
        ("rank_dropout", "network.rank_dropout", _NA, same, ""),
        ("rank_dropout_scale", "network.rank_dropout_scale", _NA, same, ""),
        ("module_dropout", "network.module_dropout", _NA, same, ""),
        ("train_norm", "network.train_norm", _NA, same, ""),
        ("block_dims", "network.block_dims", _NA, differs,
         "25 values are the SD 1.x/2.x layout; SDXL has 23 blocks: 25 equal values become 23 equal values, others "
         "need rewriting by hand"),
        ("block_alphas", "network.block_alphas", _NA, differs, "as block_dims"),
        ("conv_block_dims", "network.conv_block_dims", _NA, differs, "as block_dims"),
        ("conv_block_alphas", "network.conv_block_alphas", _NA, differs, "as block_dims"),
        ("factor", "network.factor", _NA, same, ""),
        ("decompose_both", "network.decompose_both", _NA, same, ""),
        ("full_matrix", "network.full_matrix", _NA, same, ""),
        ("dora_wd", "network.algo", _NA, same, "`dora_wd=True` becomes network.algo = 'dora'"),
        ("wd_on_output", "network.dora_axis", _NA, same, "`wd_on_output=True` becomes network.dora_axis = 'output'"),
        ("rs_lora", "network.rs_lora", _NA, same, ""),
        ("loraplus_lr_ratio", "network.loraplus_lr_ratio", _NA, same, ""),
        ("loraplus_unet_lr_ratio", None, _NA, none, "one ratio for the UNet and the text encoders: loraplus_lr_ratio"),
        ("loraplus_text_encoder_lr_ratio", None, _NA, none,
         "one ratio for the UNet and the text encoders: loraplus_lr_ratio"),
        ("down_lr_weight", None, _NA, none, "write the per-block multipliers as network.block_lr_weights"),
        ("mid_lr_weight", None, _NA, none, "write the per-block multipliers as network.block_lr_weights"),
        ("up_lr_weight", None, _NA, none, "write the per-block multipliers as network.block_lr_weights"),
        ("block_lr_zero_threshold", None, _NA, none, "write 0 in network.block_lr_weights"),
        ("use_reentrant", None, _NA, builtin, "gradient checkpointing uses the diffusers / transformers defaults"),
        ("bypass_mode", None, _NA, none, "no bypass mode"),
        # ------------------------------------------------------------------------------------------ optimizer_args
        ("weight_decay", "optimizer.adam_weight_decay", _OA, same, ""),
        ("betas", "optimizer.adam_beta1", _OA, same, "`betas=b1,b2` becomes adam_beta1 and adam_beta2"),
        ("eps", "optimizer.adam_epsilon", _OA, same, ""),
        ("momentum", "optimizer.adam_beta1", _OA, same, "SGD momentum"),
        ("d0", "optimizer.prodigy_d0", _OA, same, ""),
        ("beta3", "optimizer.prodigy_beta3", _OA, same, ""),
        ("decouple", "optimizer.prodigy_decouple", _OA, same, ""),
        ("use_bias_correction", "optimizer.prodigy_use_bias_correction", _OA, same, ""),
        ("safeguard_warmup", "optimizer.prodigy_safeguard_warmup", _OA, same, ""),
        ("relative_step", "optimizer.adafactor_relative_step", _OA, same, ""),
        ("scale_parameter", "optimizer.adafactor_scale_parameter", _OA, same, ""),
        ("warmup_init", "optimizer.adafactor_warmup_init", _OA, same, ""),
        ("d_coef", "optimizer.optimizer_args", _OA, same, "Prodigy's d_coef, as optimizer_args.d_coef"),
        ("growth_rate", "optimizer.optimizer_args", _OA, same, "Prodigy's growth_rate, as optimizer_args.growth_rate"),
        ("nesterov", "optimizer.optimizer_args", _OA, same, "SGD's nesterov, as optimizer_args.nesterov"),
        # ------------------------------------------------------------------------------------------ accelerate
        ("mixed_precision", "training.mixed_precision", _A, same, "the script's own --mixed_precision wins"),
        ("num_processes", None, _A, none, _LAUNCH),
        ("num_machines", None, _A, none, _LAUNCH),
        ("machine_rank", None, _A, none, _LAUNCH),
        ("multi_gpu", None, _A, none, _LAUNCH),
        ("gpu_ids", None, _A, none, _LAUNCH),
        ("num_cpu_threads_per_process", None, _A, none, _LAUNCH),
        ("main_process_port", None, _A, none, _LAUNCH),
        ("main_process_ip", None, _A, none, _LAUNCH),
        ("config_file", None, _A, none, _LAUNCH),
        ("dynamo_backend", None, _A, none, _LAUNCH),
        ("cpu", None, _A, none, _LAUNCH),
    ]
    rows += [(flag, key, (CLONEOFSIMO,), kind, note) for flag, key, kind, note in cloneofsimo_rows(same, differs,
                                                                                                   builtin, none)]
    return [Alias(flag, key, tools, kind, note) for flag, key, tools, kind, note in rows]


ALIASES: tuple[Alias, ...] = tuple(_entries())



def normalise_flag(name: str) -> str:
    """`--Network-Dim` -> `network_dim`."""
    return name.strip().lstrip("-").replace("-", "_").lower()


def find(flag: str, tools: tuple[str, ...] | None = None) -> list[Alias]:
    """The entries for a flag (any spelling), optionally only those of the given tools."""
    name = normalise_flag(flag)
    return [a for a in ALIASES if a.flag == name and (tools is None or set(a.tools) & set(tools))]


def tools_text(alias: Alias) -> str:
    names = [TOOL_NAMES[t] for t in alias.tools]
    return " and ".join(names)
