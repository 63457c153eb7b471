# [H] SD1.5 text-to-image LoRA (seed-practices.md §16), as pasted from the guide
export MODEL_NAME="runwayml/stable-diffusion-v1-5"
export DATASET_NAME="./pokemon"

accelerate launch --mixed_precision="fp16" train_text_to_image_lora.py \
  --pretrained_model_name_or_path=$MODEL_NAME \
  --train_data_dir=$DATASET_NAME \
  --dataloader_num_workers=8 \
  --resolution=512 --center_crop --random_flip \
  --train_batch_size=1 \
  --gradient_accumulation_steps=4 \
  --max_train_steps=1500 \
  --learning_rate=1e-04 \
  --max_grad_norm=1 \
  --lr_scheduler="cosine" --lr_warmup_steps=0 \
  --output_dir="sd-pokemon-model-lora" \
  --checkpointing_steps=500 \
  --validation_epochs=10 \
  --seed=42 \
  --report_to=wandb
