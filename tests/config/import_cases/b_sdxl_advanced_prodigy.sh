# [B] the Prodigy variant of the SDXL advanced recipe (seed-practices.md §5, §16)
accelerate launch train_dreambooth_lora_sdxl_advanced.py \
  --pretrained_model_name_or_path="stabilityai/stable-diffusion-xl-base-1.0" \
  --instance_data_dir="./my_face" \
  --instance_prompt="photo of a TOK person" \
  --output_dir="face_lora" \
  --optimizer="prodigy" --learning_rate=1.0 --text_encoder_lr=1.0 \
  --prodigy_safeguard_warmup=True --prodigy_use_bias_correction=True \
  --adam_beta1=0.9 --adam_beta2=0.99 --adam_weight_decay=0.01 \
  --train_text_encoder_ti --train_text_encoder_ti_frac=0.5 \
  --token_abstraction="TOK" --num_new_tokens_per_abstraction=2 \
  --with_prior_preservation --class_data_dir="./faces_prior" --class_prompt="photo of a person" --num_class_images=150 \
  --rank=32 --repeats=1 --snr_gamma=5.0 --max_train_steps=720 --train_batch_size=1 \
  --lr_scheduler="constant" --lr_warmup_steps=0 --mixed_precision="bf16" --resolution=1024
