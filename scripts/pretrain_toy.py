"""Pretrain the toy model (`loraforge.models.toy`) on the toy world (`loraforge.world`), in resumable chunks.

    python scripts/pretrain_toy.py --minutes 30            # run 30 minutes, save, exit; run again to continue
    python scripts/pretrain_toy.py --device cuda --minutes 8
    python scripts/pretrain_toy.py --eval                  # judge the current weights (needs the shipped judge)
    python scripts/pretrain_toy.py --eval-vae              # judge the VAE's reconstructions: the model's ceiling
    python scripts/pretrain_toy.py --export                # write src/loraforge/models/assets/toy-sd15.*

Phases, each resumed where the last chunk stopped (state in --work, default `.toy-pretrain/`, all safetensors/JSON):
1. `vae`: the AutoencoderKL learns to reconstruct world images of every shape and fill (a generic image codec,
   like SD's VAE: the held-out concepts are kept from the UNet and text encoder, not from the codec).
2. `latents`: a fixed set of base-world scenes (`--scenes`) is encoded once; the latent scaling factor is set to
   1 / std of their latents, as SD's 0.18215 was.
3. `unet`: the UNet and the text encoder learn together from scratch (epsilon prediction, SD 1.5's noise schedule,
   min-SNR-5 weighting, 10 % empty captions for classifier-free guidance, captions with parts left out at random).

Every `--save-every` steps and at the end of a chunk, the weights and optimizer state are written atomically, so a
crash or Ctrl-C loses at most that many steps. The time spent per phase and device is kept in the state.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from loraforge.models.toy import REPORT, WEIGHTS, toy_pipeline, toy_text_encoder, toy_unet, toy_vae
from loraforge.models.tokenizer import clip_tokenizer
from loraforge.utils.files import file_sha256, save_safetensors_atomic, write_text_atomic
from loraforge.world.scene import BASE_SHAPES, FILLS, SHAPES, caption, random_caption, render, scenes

SEED = 1234


def to_tensor(images) -> torch.Tensor:
    import numpy as np

    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _flat_optimizer(opt: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    """AdamW state as named tensors (safetensors, no pickle)."""
    out = {}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                out[f"{names[id(p)]}::{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def _load_optimizer(opt: torch.optim.Optimizer, names: dict[int, str], flat: dict[str, torch.Tensor]) -> None:
    for group in opt.param_groups:
        for p in group["params"]:
            state = {k.split("::", 1)[1]: v.to(p.device) for k, v in flat.items() if k.split("::", 1)[0] == names[id(p)]}
            if state:
                opt.state[p] = state


class Run:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(args.device)
        self.state_file = self.work / "state.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {
            "vae_step": 0, "unet_step": 0, "seconds": {}, "scaling_factor": None}
        self.stop = False
        signal.signal(signal.SIGINT, self._interrupt)
        signal.signal(signal.SIGTERM, self._interrupt)

    def _interrupt(self, *_):
        print("interrupted: saving at the next step", flush=True)
        self.stop = True

    def save_state(self):
        write_text_atomic(self.state_file, json.dumps(self.state, indent=1))

    def add_time(self, phase: str, seconds: float):
        key = f"{phase}@{self.device.type}"
        self.state["seconds"][key] = self.state["seconds"].get(key, 0.0) + seconds

    # ------------------------------------------------------------------------------------------------------ vae
    def train_vae(self, deadline: float):
        a = self.args
        torch.manual_seed(SEED)  # the same initial weights on every machine (then replaced by the saved ones)
        vae = toy_vae().to(self.device)
        with torch.no_grad():  # start nearly deterministic (posterior std e^-4): the decoder sees the code, not noise
            vae.quant_conv.bias[vae.config.latent_channels:] = -8.0
        opt = torch.optim.AdamW(vae.parameters(), lr=a.vae_lr, weight_decay=0.0)
        names = {id(p): n for n, p in vae.named_parameters()}
        if (self.work / "vae.safetensors").is_file():
            vae.load_state_dict(load_file(str(self.work / "vae.safetensors")))
            _load_optimizer(opt, names, load_file(str(self.work / "vae_opt.safetensors")))
        step, t0, last = self.state["vae_step"], time.time(), time.time()
        end = min(a.vae_steps, step + a.chunk_steps) if a.chunk_steps else a.vae_steps
        while step < end and time.time() < deadline and not self.stop:
            rng = random.Random(f"vae-{step}")
            batch = [render(s) for s in scenes(rng.randrange(1 << 30), a.vae_batch, shapes=SHAPES, fills=FILLS)]
            x = to_tensor(batch)
            if a.vae_crop < x.shape[-1]:  # the VAE is convolutional: random crops train it at a fraction of the cost
                i, j = rng.randrange(x.shape[-2] - a.vae_crop + 1), rng.randrange(x.shape[-1] - a.vae_crop + 1)
                x = x[..., i:i + a.vae_crop, j:j + a.vae_crop]
            x = x.to(self.device)
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample()).sample
            # The shape covers a few percent of the pixels: weight them (pixels away from the image's median
            # colour, its background) 5x, or the codec learns backgrounds long before it learns shapes.
            background = x.flatten(2).median(dim=2).values[..., None, None]
            weight = 1.0 + 4.0 * ((x - background).abs().amax(dim=1, keepdim=True) > 0.1).float()
            err = weight * ((rec - x) ** 2 + 0.5 * (rec - x).abs())
            loss = err.mean() / weight.mean() + 1e-6 * post.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 50 == 0:
                print(f"vae step {step}/{a.vae_steps} loss {loss.item():.4f} ({(time.time() - last) / 50:.2f} s/step)",
                      flush=True)
                last = time.time()
            if step % a.save_every == 0:
                self._save_vae(vae, opt, names, step, t0)
                t0 = time.time()
        self._save_vae(vae, opt, names, step, t0)

    def _save_vae(self, vae, opt, names, step, t0):
        self._save("vae", {"vae": vae}, opt, names, step, t0)

    def _save(self, phase: str, modules: dict, opt, names, step, t0):
        """Weights, AdamW state, step and time of `phase`, each file written atomically, the state last."""
        for name, module in modules.items():
            save_safetensors_atomic({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                                    self.work / f"{name}.safetensors")
        optimizer_file = "vae_opt.safetensors" if phase == "vae" else "opt.safetensors"
        save_safetensors_atomic({k: v.cpu() for k, v in _flat_optimizer(opt, names).items()},
                                self.work / optimizer_file)
        self.state[f"{phase}_step"] = step
        self.add_time(phase, time.time() - t0)
        self.save_state()

    # -------------------------------------------------------------------------------------------------- latents
    def cache_latents(self):
        a = self.args
        path = self.work / "latents.safetensors"
        if path.is_file() and self.state.get("latents_vae_step") == self.state["vae_step"]:
            return load_file(str(path))
        if self.state["unet_step"] > 0 and self.state.get("latents_vae_step") != self.state["vae_step"]:
            raise SystemExit(f"{self.work}: the VAE changed after the UNet started training on its latents; start the "
                             "UNet over (delete unet.safetensors, text_encoder.safetensors, opt.safetensors and set "
                             "unet_step to 0 in state.json) or keep --vae-steps at the value it had")
        t0 = time.time()
        vae = toy_vae().to(self.device)
        vae.load_state_dict(load_file(str(self.work / "vae.safetensors")))
        vae.eval()
        base = scenes(SEED, a.scenes, shapes=BASE_SHAPES)
        means, stds = [], []
        with torch.no_grad():
            for i in range(0, len(base), 256):
                d = vae.encode(to_tensor([render(s) for s in base[i:i + 256]]).to(self.device)).latent_dist
                means.append(d.mean.cpu())
                stds.append(d.std.cpu())
        mean, std = torch.cat(means), torch.cat(stds)
        self.state["scaling_factor"] = float(1.0 / mean.std())
        self.state["latents_vae_step"] = self.state["vae_step"]
        save_safetensors_atomic({"mean": mean.half().contiguous(), "std": std.half().contiguous()}, path)
        self.add_time("latents", time.time() - t0)
        self.save_state()
        print(f"cached {len(base)} latents, scaling factor {self.state['scaling_factor']:.4f}", flush=True)
        return {"mean": mean.half(), "std": std.half()}

    # ----------------------------------------------------------------------------------------------- unet + te
    def train_unet(self, deadline: float):
        from diffusers import DDPMScheduler

        a = self.args
        lat = self.cache_latents()
        base = scenes(SEED, a.scenes, shapes=BASE_SHAPES)
        scale = self.state["scaling_factor"]
        torch.manual_seed(SEED)
        unet, te = toy_unet().to(self.device), toy_text_encoder().to(self.device)
        tok = clip_tokenizer(pad_token="<|endoftext|>")
        params = list(unet.parameters()) + list(te.parameters())
        names = {id(p): "unet." + n for n, p in unet.named_parameters()}
        names.update({id(p): "text_encoder." + n for n, p in te.named_parameters()})
        opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
        if (self.work / "unet.safetensors").is_file():
            unet.load_state_dict(load_file(str(self.work / "unet.safetensors")))
            te.load_state_dict(load_file(str(self.work / "text_encoder.safetensors")))
            _load_optimizer(opt, names, load_file(str(self.work / "opt.safetensors")))
        sched = toy_pipeline().scheduler
        noise_sched = DDPMScheduler.from_config(sched.config)
        alphas = noise_sched.alphas_cumprod.to(self.device)
        snr = alphas / (1 - alphas)
        step, t0, last = self.state["unet_step"], time.time(), time.time()
        end = min(a.unet_steps, step + a.chunk_steps) if a.chunk_steps else a.unet_steps
        while step < end and time.time() < deadline and not self.stop:
            g = torch.Generator().manual_seed(SEED + step)
            rng = random.Random(f"unet-{step}")
            idx = torch.randint(0, len(base), (a.batch,), generator=g)
            mean, std = lat["mean"][idx].float(), lat["std"][idx].float()
            latents = ((mean + std * torch.randn(mean.shape, generator=g)) * scale).to(self.device)
            caps = ["" if rng.random() < 0.1 else random_caption(base[i], rng) for i in idx.tolist()]
            ids = tok(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            noise = torch.randn(latents.shape, generator=g).to(self.device)
            t = torch.randint(0, 1000, (a.batch,), generator=g).to(self.device)
            noisy = noise_sched.add_noise(latents, noise, t)
            pred = unet(noisy, t, te(ids.to(self.device))[0]).sample
            w = torch.clamp(snr[t], max=5.0) / snr[t]  # min-SNR-5, epsilon prediction
            loss = (F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3)) * w).mean()
            lr = a.lr * min(1.0, (step + 1) / 200)
            if a.unet_steps > 0 and step > a.decay_from * a.unet_steps:
                frac = (step - a.decay_from * a.unet_steps) / ((1 - a.decay_from) * a.unet_steps)
                lr *= 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            if step % 50 == 0:
                print(f"unet step {step}/{a.unet_steps} loss {loss.item():.4f} lr {lr:.2e} "
                      f"({(time.time() - last) / 50:.2f} s/step)", flush=True)
                last = time.time()
            if step % a.save_every == 0:
                self._save_unet(unet, te, opt, names, step, t0)
                t0 = time.time()
        self._save_unet(unet, te, opt, names, step, t0)

    def _save_unet(self, unet, te, opt, names, step, t0):
        self._save("unet", {"unet": unet, "text_encoder": te}, opt, names, step, t0)

    # ------------------------------------------------------------------------------------------ export / eval
    def pipeline(self):
        pipe = toy_pipeline()
        pipe.vae.load_state_dict(load_file(str(self.work / "vae.safetensors")))
        pipe.vae.register_to_config(scaling_factor=self.state["scaling_factor"])
        pipe.unet.load_state_dict(load_file(str(self.work / "unet.safetensors")))
        pipe.text_encoder.load_state_dict(load_file(str(self.work / "text_encoder.safetensors")))
        return pipe.to(self.device)

    def evaluate(self, n: int = 200) -> dict:
        from loraforge.world.judge import load_judge

        pipe, judge = self.pipeline(), load_judge()
        held = scenes(SEED + 1, n, shapes=BASE_SHAPES)
        images = []
        for i in range(0, n, 50):
            chunk = held[i:i + 50]
            g = torch.Generator().manual_seed(i)
            images += pipe([caption(s) for s in chunk], num_inference_steps=25, guidance_scale=self.args.cfg,
                           height=64, width=64, generator=g).images
        read = judge.read(images)
        acc = {attr: sum(r[attr] == getattr(s, attr) for r, s in zip(read, held)) / n
               for attr in ("shape", "colour", "background", "position", "size")}
        print("accuracy on held-out prompts:", json.dumps(acc), flush=True)
        return {"prompts": n, "steps": 25, "guidance_scale": self.args.cfg, "accuracy": acc}

    def evaluate_vae(self, n: int = 300) -> dict:
        """The judge's accuracy on VAE reconstructions of fresh base-world images: the ceiling of what the whole model
        can reach (the UNet can only make what the decoder draws)."""
        from PIL import Image

        from loraforge.world.judge import accuracy, load_judge

        vae = toy_vae().to(self.device)
        vae.load_state_dict(load_file(str(self.work / "vae.safetensors")))
        vae.eval()
        held = scenes(SEED + 2, n, shapes=BASE_SHAPES)
        with torch.no_grad():
            rec = vae.decode(vae.encode(to_tensor([render(s) for s in held]).to(self.device)).latent_dist.mean).sample
        images = [Image.fromarray(((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy())
                  for t in rec]
        acc = {k: round(v, 4) for k, v in accuracy(load_judge(), held, images).items()}
        print(f"judge on VAE reconstructions (step {self.state['vae_step']}):", json.dumps(acc), flush=True)
        return {"vae_step": self.state["vae_step"], "images": n, "accuracy": acc}

    def export(self):
        if self.state.get("latents_vae_step") != self.state["vae_step"]:
            raise SystemExit(f"{self.work}: the VAE (step {self.state['vae_step']}) is not the one the UNet was trained "
                             "with; train the UNet on its latents before exporting")
        weights, report_path = WEIGHTS, REPORT
        if self.args.export_to:
            weights, report_path = Path(self.args.export_to) / WEIGHTS.name, Path(self.args.export_to) / REPORT.name
        pipe = self.pipeline().to("cpu")
        tensors = {}
        for part in ("unet", "vae", "text_encoder"):
            for k, v in getattr(pipe, part).state_dict().items():
                tensors[f"{part}.{k}"] = v.detach().half().contiguous()
        meta = {"vae_scaling_factor": repr(self.state["scaling_factor"]), "unet_steps": str(self.state["unet_step"]),
                "vae_steps": str(self.state["vae_step"])}
        save_safetensors_atomic(tensors, weights, metadata=meta)
        report = {"sha256": file_sha256(weights), "bytes": weights.stat().st_size, **self.state,
                  "torch": torch.__version__, "machine": platform.machine(), "batch": self.args.batch}
        if (self.work / "eval.json").is_file():
            report["eval"] = json.loads((self.work / "eval.json").read_text())
        write_text_atomic(report_path, json.dumps(report, indent=1) + "\n")
        print(f"wrote {weights} ({report['bytes'] / 1e6:.1f} MB) and {report_path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=".toy-pretrain")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (the default leaves a core for other work)")
    p.add_argument("--minutes", type=float, default=30.0, help="stop (and save) after this long")
    p.add_argument("--chunk-steps", type=int, default=0, help="stop (and save) after this many steps of the phase "
                                                               "in progress (0: no limit)")
    p.add_argument("--vae-steps", type=int, default=4225)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-crop", type=int, default=32, help="train the VAE on random crops of this side")
    p.add_argument("--vae-lr", type=float, default=1e-4)
    p.add_argument("--scenes", type=int, default=40000)
    p.add_argument("--unet-steps", type=int, default=9000)
    p.add_argument("--decay-from", type=float, default=0.7, help="cosine decay of the lr over the last part")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--cfg", type=float, default=4.0, help="guidance scale for --eval")
    p.add_argument("--eval", action="store_true")
    p.add_argument("--eval-prompts", type=int, default=200, help="held-out prompts judged by --eval")
    p.add_argument("--eval-vae", action="store_true", help="judge the VAE's reconstructions (the model's ceiling)")
    p.add_argument("--export", action="store_true")
    p.add_argument("--export-to", metavar="DIR", help="write the exported files here instead of the package assets")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    run = Run(a)
    if a.eval:
        write_text_atomic(run.work / "eval.json", json.dumps(run.evaluate(a.eval_prompts), indent=1))
        return
    if a.eval_vae:
        write_text_atomic(run.work / "eval-vae.json", json.dumps(run.evaluate_vae(), indent=1))
        return
    if a.export:
        run.export()
        return
    deadline = time.time() + a.minutes * 60
    vae_ran = run.state["vae_step"] < a.vae_steps
    if vae_ran:
        run.train_vae(deadline)
    if run.state["vae_step"] >= a.vae_steps and not (a.chunk_steps and vae_ran) and not run.stop \
            and time.time() < deadline:
        run.train_unet(deadline)
    print(f"stopped: vae {run.state['vae_step']}/{a.vae_steps}, unet {run.state['unet_step']}/{a.unet_steps}; "
          f"time {json.dumps(run.state['seconds'])}", flush=True)


if __name__ == "__main__":
    main()
