"""`loraforge import` for the FLUX.1 scripts: kohya's `flux_train_network.py` and diffusers'
`train_dreambooth_lora_flux.py` / `train_dreambooth_lora_flux_advanced.py`.

Their timestep flags only mean something together, so the handlers here record them and `flux_rules` translates the
set once every flag is read:

- kohya `--timestep_sampling` (default `sigma`): `sigma` draws σ from `--weighting_scheme`'s density (`logit_normal`
  with `--logit_mean/--logit_std`, `mode`, else uniform) on the scheduler's schedule, which `--discrete_flow_shift`
  (default 3.0) shifts; `uniform`; `sigmoid` (sigmoid of `--sigmoid_scale`·N(0, 1)); `shift` (that sigmoid, then
  shifted by `--discrete_flow_shift`); `flux_shift` (that sigmoid, shifted by FLUX's resolution rule). loraforge has
  each as `training.timestep_sampling` + `training.flow_shift` / `training.flow_resolution_shift`.
- diffusers `--weighting_scheme` is both: `logit_normal` / `mode` a sampling density, `sigma_sqrt` / `cosmap` a loss
  weighting (the schedule is not shifted in training: FLUX's scheduler shifts dynamically, at sampling only).
- kohya `--model_prediction_type` (default `sigma_scaled`, which also weights the loss by `--weighting_scheme`):
  loraforge trains the raw flow prediction, kohya's `raw` (the setting its FLUX guide recommends).
"""

from __future__ import annotations

from .aliases import DIFFUSERS, KOHYA
from .import_translation import Translation, scalar

# the flags recorded by their handlers and translated together by `flux_rules`
FLUX_TIMESTEP_FLAGS = ("timestep_sampling", "discrete_flow_shift", "weighting_scheme", "model_prediction_type",
                       "mode_scale")
KOHYA_FLUX_DEFAULTS = {"guidance_scale": 3.5}  # flux_train_network.py; loraforge's is 1.0, the diffusers scripts'
DIFFUSERS_FLUX_DEFAULTS = {"guidance_scale": 3.5}


def record(t: Translation, flag) -> None:
    """A timestep flag: kept in `t.given`, translated by `flux_rules` with the others."""


def _given(t: Translation, name: str, default):
    flag = t.given.get(name)
    return (default, f"--{name} not given ({'kohya' if t.tool == KOHYA else t.script}'s default {default})") \
        if flag is None else (flag.value, flag.text)


def flux_rules(t: Translation, family: str) -> None:
    """The FLUX scripts' timestep, weighting and prediction flags, and their defaults that differ from loraforge's;
    for another family's script those flags are listed as not mapped."""
    if family != "flux":
        for name in FLUX_TIMESTEP_FLAGS:
            if name in t.given:
                t.skip(t.given[name].text, f"a FLUX.1 script's flag; {t.script} does not train FLUX.1")
        return
    for name, value in (KOHYA_FLUX_DEFAULTS if t.tool == KOHYA else DIFFUSERS_FLUX_DEFAULTS).items():
        t.default(name, value)
    if t.tool == KOHYA:
        _kohya_timesteps(t)
    elif t.tool == DIFFUSERS:
        _diffusers_weighting(t)
    if "mode_scale" in t.given:
        t.skip(t.given["mode_scale"].text, "no equivalent: loraforge has no 'mode' timestep density")


def _kohya_timesteps(t: Translation) -> None:
    sampling, sampling_text = _given(t, "timestep_sampling", "sigma")
    shift, shift_text = _given(t, "discrete_flow_shift", 3.0)
    scheme, scheme_text = _given(t, "weighting_scheme", "none")
    prediction, prediction_text = _given(t, "model_prediction_type", "sigma_scaled")
    sampling, scheme = str(sampling), str(scheme)
    draw = {"sigma": "uniform", "uniform": "uniform", "sigmoid": "sigmoid", "shift": "sigmoid",
            "flux_shift": "sigmoid"}.get(sampling)
    if draw is None:
        t.skip(sampling_text, f"kohya's timestep_sampling {sampling!r} has no equivalent; 'uniform' is written")
        draw = "uniform"
    if sampling == "sigma" and scheme == "logit_normal":
        draw = "logit_normal"
    elif sampling == "sigma" and scheme == "mode":
        t.skip(scheme_text, "no equivalent: loraforge has no 'mode' timestep density; uniform is written")
    t.set("training.timestep_sampling", draw, sampling_text, default="timestep_sampling" not in t.given)
    if sampling in ("sigma", "shift"):
        value = scalar(float, shift)
        if value != 1.0:
            t.set("training.flow_shift", value, shift_text, default="discrete_flow_shift" not in t.given)
    elif sampling == "flux_shift":
        t.set("training.flow_resolution_shift", True, sampling_text)
    elif "discrete_flow_shift" in t.given:
        t.skip(shift_text, f"not used by kohya with --timestep_sampling {sampling}")
    if prediction == "raw":
        t.skip(prediction_text, "not needed: loraforge trains the raw flow prediction (noise − latents)")
        if scheme in ("sigma_sqrt", "cosmap"):
            t.skip(scheme_text, "kohya weights the loss by it only with --model_prediction_type sigma_scaled; "
                                "with raw it does not, nor does loraforge")
    else:
        t.skip(prediction_text, "no equivalent: loraforge trains the raw flow prediction (noise − latents), "
                                f"kohya's `raw`, the setting its FLUX guide recommends; {prediction!r} is not offered")
        if scheme in ("sigma_sqrt", "cosmap"):
            t.set("training.weighting_scheme", scheme, scheme_text)


def _diffusers_weighting(t: Translation) -> None:
    scheme, scheme_text = _given(t, "weighting_scheme", "none")
    scheme = str(scheme)
    if scheme == "logit_normal":
        t.set("training.timestep_sampling", "logit_normal", scheme_text)
    elif scheme in ("sigma_sqrt", "cosmap"):
        t.set("training.weighting_scheme", scheme, scheme_text)
    elif scheme == "mode":
        t.skip(scheme_text, "no equivalent: loraforge has no 'mode' timestep density; uniform is written")
    for name in ("timestep_sampling", "discrete_flow_shift", "model_prediction_type"):
        if name in t.given:
            t.skip(t.given[name].text, f"not a {t.script} flag")


def flux_handlers() -> dict[tuple[str, str], object]:
    """The handlers of the recorded flags, for the importer's handler table."""
    return {(tool, name): record for tool in (KOHYA, DIFFUSERS) for name in FLUX_TIMESTEP_FLAGS}


__all__ = ["FLUX_TIMESTEP_FLAGS", "flux_handlers", "flux_rules"]
