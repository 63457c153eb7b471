"""Writing a trained network: the kohya file, the diffusers file, and their metadata. Used for the final result
and for every checkpoint. Nothing is written when a tensor holds NaN or Inf (`NonFiniteError`). After each save the
kohya file goes through the consumer check (ComfyUI, A1111, diffusers) against the trained model's own architecture,
and the verdict is logged."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import NonFiniteError
from ..formats.check import check_state_dict
from ..formats.diffusers_lora import WEIGHT_NAME, save_diffusers_lora
from ..formats.embeddings import check_embedding_file, embedding_keys, embeddings_file_name, save_embeddings
from ..formats.kohya import kohya_state_dict, kohya_support
from ..formats.metadata import model_hashes, training_metadata
from ..utils.dtypes import torch_dtype
from ..utils.files import save_safetensors_atomic
from ..utils.tensors import describe_nonfinite, nonfinite_tensors
from .nonfinite import FIXES

log = logging.getLogger(__name__)



@dataclass
class WrittenFiles:
    kohya: Path | None = None
    diffusers: Path | None = None
    embeddings: Path | None = None
    extra: dict[str, Path] = field(default_factory=dict)
    check: object | None = None  # the CheckReport of the kohya file
    embeddings_problems: list[str] | None = None  # of the embeddings file read back as consumers read it


def write_lora_files(
    cfg, network, model, run_info: dict, folder: Path, kohya_name: str, pivotal=None
) -> WrittenFiles:
    dtype = torch_dtype(cfg.output.save_precision)
    family = model.family.name
    out = WrittenFiles()
    lora = bool(network.parts)  # network.algo = "none" (textual inversion alone): the embeddings file only
    no_kohya = kohya_support(family) if lora and cfg.output.write_kohya else None
    if no_kohya is None:
        sd = kohya_state_dict(network.module_tensors().values(), family, dict(model.unet.config), dtype=dtype) if lora else {}
    else:  # FLUX until the kohya writer knows it: the same tensors under their module paths, for the NaN check
        sd = {f"{p}.{path}.{k}": v.to(dtype) for (p, path), mt in network.module_tensors().items()
              for k, v in mt.tensors.items()}
    refuse_nonfinite(sd, pivotal, family, dtype,
                     folder / (f"{kohya_name}.safetensors" if lora else embeddings_file_name(kohya_name)))
    folder.mkdir(parents=True, exist_ok=True)
    if no_kohya and not getattr(network, "_kohya_note_logged", False):
        network._kohya_note_logged = True
        log.warning("no kohya file: %s; only the diffusers file (%s) is written, for diffusers' "
                    "`pipe.load_lora_weights`. Set output.write_kohya = false to silence this note", no_kohya,
                    WEIGHT_NAME)
    if lora and cfg.output.write_kohya and no_kohya is None:
        meta = training_metadata(cfg, run_info, family, network.algo, network.network_args(), network.network_module())
        meta["sshs_model_hash"], meta["sshs_legacy_hash"] = model_hashes(sd, meta)
        out.kohya = folder / f"{kohya_name}.safetensors"
        save_safetensors_atomic(sd, out.kohya, metadata=meta)
        out.check = check_written(sd, meta, model, out.kohya)
    if lora and cfg.output.write_diffusers:
        why = network.diffusers_support()
        if why is None:
            out.diffusers = save_diffusers_lora(network, family, folder / WEIGHT_NAME, dtype)
        elif not getattr(network, "_diffusers_note_logged", False):
            network._diffusers_note_logged = True
            log.info(
                "no diffusers file: %s. Load the kohya file (%s.safetensors) in AUTOMATIC1111 or ComfyUI, or bake it "
                "into the model with `loraforge merge`", why, kohya_name
            )
    if pivotal is not None:
        meta = {"tokens": ",".join(pivotal.tokens), "token_abstraction": cfg.training.token_abstraction}
        out.embeddings = save_embeddings(folder / embeddings_file_name(kohya_name), family, pivotal.vectors(), meta, dtype,
                                         pivotal.optional)
        out.embeddings_problems = check_embedding_written(out.embeddings, model)
    return out


def check_embedding_written(path: Path, model) -> list[str]:
    """The consumer check of an embeddings file just written (`check_embedding_file`), logged on one line."""
    widths = [te.get_input_embeddings().embedding_dim for te in model.text_encoders]
    summary, problems = check_embedding_file(path, model.family.name, widths)
    log.info("check %s: %s", path.name, summary)
    for problem in problems:
        log.warning("check %s: %s", path.name, problem)
    return problems


def refuse_nonfinite(sd: dict, pivotal, family: str, dtype: torch.dtype, target: Path) -> None:
    """Raise `NonFiniteError` naming the tensors when the files about to be written would hold NaN or Inf (the kohya
    state dict holds every tensor the diffusers file holds, in the same dtype)."""
    tensors = dict(sd)
    if pivotal is not None:
        tensors.update({f"embeddings {k}": v.to(dtype)
                        for k, v in zip(embedding_keys(family, pivotal.optional), pivotal.vectors())})
    bad = nonfinite_tensors(tensors)
    if not bad:
        return
    fp16 = (" With output.save_precision = \"fp16\", values beyond ±65504 become Inf: save in \"bf16\" or \"fp32\"."
            if dtype == torch.float16 else "")
    raise NonFiniteError(
        f"not writing {target} (nor the other files of this save): {len(bad)} tensors hold NaN or infinite values: "
        f"{describe_nonfinite(bad)}.{fp16} The training diverged; check {FIXES}"
    )


def check_written(sd: dict, metadata: dict, model, path: Path):
    """Run the consumer check on a kohya file just written, against the model's own architecture; log one summary
    line (`ComfyUI 48/48 modules, A1111 48/48, diffusers loads`) and, for any miss, the consumer's details with the
    key names."""
    try:
        report = check_state_dict(
            sd,
            model.family.name,
            metadata,
            unet_config=dict(model.unet.config),
            text_encoder_configs=[te.config.to_dict() for te in model.text_encoders],
        )
    except Exception as e:  # noqa: BLE001 - a checker failure must never lose a trained file
        log.warning("check %s: the consumer check failed (%s: %s)", path.name, type(e).__name__, e)
        return None
    log.info("check %s: %s", path.name, report.summary())
    for consumer in report.consumers.values():
        # diffusers refusing LoHa/LoKr or loading DoRA as plain LoRA is said by the summary line already
        own = consumer.consumer != "diffusers"
        if consumer.unmatched or consumer.skipped or (own and (consumer.wrong or not consumer.loads)):
            for line in consumer.lines(limit=20):
                log.warning("check %s: %s", path.name, line)
    for issue in report.errors:
        log.warning("check %s: %s", path.name, issue)
    return report
