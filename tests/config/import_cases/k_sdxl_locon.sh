# [K] SDXL LoCon with sd-scripts + LyCORIS (seed-practices.md §7, §16); the model, data and output paths are the
# guide's placeholders
accelerate launch --num_cpu_threads_per_process=2 sdxl_train_network.py \
  --pretrained_model_name_or_path="/models/ponyDiffusionV6XL.safetensors" \
  --train_data_dir="img" --output_dir="output" --output_name="xl-locon" \
  --lowram --resolution="1024,1024" --enable_bucket --min_bucket_reso=256 --max_bucket_reso=1024 \
  --bucket_reso_steps=32 --network_module="lycoris.kohya" \
  --network_args "preset=full" "conv_dim=256" "conv_alpha=4" "use_tucker=False" "use_scalar=False" \
    "rank_dropout_scale=False" "algo=locon" "train_norm=False" "block_dims=8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8" "block_alphas=0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625,0.0625" \
  --network_dim=8 --network_alpha=4 --network_dropout=0 --lr_scheduler="cosine" --learning_rate=0.0001 \
  --unet_lr=0.0001 --text_encoder_lr=0.0001 --optimizer_type="AdamW" --max_grad_norm=1 --scale_weight_norms=1 \
  --no_half_vae --mixed_precision="fp16" --save_precision="fp16" --save_model_as="safetensors" \
  --save_every_n_epochs=50 --caption_extension=".txt" --shuffle_caption --keep_tokens=1 --cache_latents \
  --cache_latents_to_disk --max_data_loader_n_workers=8 --multires_noise_iterations=10 \
  --multires_noise_discount=0.1 --gradient_accumulation_steps=6 --gradient_checkpointing --train_batch_size=8 \
  --dataset_repeats=0 --max_train_steps=400 --sdpa --sample_sampler="euler_a" --sample_every_n_steps=100 \
  --log_prefix=xl-locon
