"""The sampler names a config (`sampling.sample_sampler`), a kohya prompt file (`--ss`) or `loraforge sample
--sampler` accepts: kohya's names → the diffusers scheduler each stands for. Data only (no diffusers import), so that
config validation needs nothing above config; `loraforge.sampling.samplers` builds the schedulers.

`k_` names use Karras sigmas where the diffusers scheduler supports them (EulerAncestral does not, so `k_euler_a`
equals `euler_a`, as in sd-scripts); `_a` names are the ancestral variants.
"""

from __future__ import annotations

SAMPLERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
    "k_lms": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "k_euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "k_euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "k_dpm_2": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "k_dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
}

# A1111's names, for the `parameters` text chunk of sample PNGs.
A1111_NAMES = {
    "ddim": "DDIM", "pndm": "PLMS", "lms": "LMS", "euler": "Euler", "euler_a": "Euler a", "heun": "Heun",
    "dpm_2": "DPM2", "dpm_2_a": "DPM2 a", "dpmsolver": "DPM++ 2M", "dpmsolver++": "DPM++ 2M",
    "dpmsingle": "DPM++ SDE", "k_lms": "LMS Karras", "k_euler": "Euler Karras", "k_euler_a": "Euler a",
    "k_dpm_2": "DPM2 Karras", "k_dpm_2_a": "DPM2 a Karras",
}


def normalize_sampler(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return key
