"""Seeded synthetic chest radiographs with findings, masks and free-text reports.

The project's embedded default data set: no download, no patient data, and ground truth for every
image (labels, per-finding masks, side/location/severity), so quantitative tests can run anywhere.
Findings are drawn where they belong anatomically and kept subtle relative to normal variation
(patient size, heart size, diaphragm height, pose, exposure, breast shadows, ECG leads, skin folds),
so an image-only model is distracted by anatomy while a supervised one can still learn them; the
calibration is measured by ``benchmarks/synth_calibration.py`` (see ``docs/synthetic.md``).

Conventions: images are frontal (PA) views, the patient's right is on the image left. Mask bit
``k`` is finding ``LESIONS[k]``. Every random choice of image ``i`` comes from ``(seed, i)`` (and
its patient's seed), so output bytes do not depend on the number of workers and a larger ``n``
extends a smaller set without changing its images.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from convirt.errors import ConfigError

GENERATOR_VERSION = "1.0"
FINDINGS = ["No Finding", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion", "Pneumonia",
            "Pneumothorax", "Fracture"]
LESIONS = FINDINGS[1:]  # mask bit k <-> LESIONS[k]
MASK_BITS = {name: 1 << k for k, name in enumerate(LESIONS)}
LATERALISED = {"Atelectasis", "Consolidation", "Pleural Effusion", "Pneumonia", "Pneumothorax", "Fracture"}
PREVALENCE = {"Atelectasis": 0.15, "Cardiomegaly": 0.15, "Consolidation": 0.12, "Edema": 0.12,
              "Pleural Effusion": 0.18, "Pneumonia": 0.12, "Pneumothorax": 0.12, "Fracture": 0.12}
SPLIT_FRACTIONS = (("train", 0.7), ("valid", 0.15), ("test", 0.15))
SECOND_STUDY_P = 0.25  # chance that the next image is a follow-up of the previous (single-study) patient

# Visibility of each finding at strength 1 (tuned with benchmarks/synth_calibration.py).
BASE_STRENGTH = {"Atelectasis": 1.0, "Cardiomegaly": 1.0, "Consolidation": 1.0, "Edema": 0.7,
                 "Pleural Effusion": 1.0, "Pneumonia": 1.3, "Pneumothorax": 1.0, "Fracture": 2.0}

SEVERITY = {
    "Atelectasis": ("minimal", "mild", "moderate"),
    "Cardiomegaly": ("mild", "moderate", "severe"),
    "Consolidation": ("small", "moderate", "extensive"),
    "Edema": ("mild", "moderate", "severe"),
    "Pleural Effusion": ("small", "moderate", "large"),
    "Pneumonia": ("mild", "moderate", "extensive"),
    "Pneumothorax": ("small", "moderate", "large"),
    "Fracture": ("nondisplaced", "minimally displaced", "displaced"),
}
LOBES = {"right": ("upper", "middle", "lower"), "left": ("upper", "lingula", "lower")}


@dataclass(frozen=True)
class Finding:
    """One positive finding with what the report says about it."""

    name: str
    severity: int  # 0..2, index into SEVERITY[name]
    side: str | None = None  # "right" / "left" / "bilateral" (patient side) or None
    location: str | None = None  # lobe ("upper", "middle", "lingula", "lower"), zone ("base", "mid") or rib number
    params: dict = field(default_factory=dict, compare=False)  # rendering details, not reported


@dataclass(frozen=True)
class Study:
    """One rendered image with its ground truth."""

    image: np.ndarray  # (H, W) uint8
    mask: np.ndarray  # (H, W) uint8 bit mask, bit k = LESIONS[k]
    body: np.ndarray  # (H, W) bool
    findings: tuple[Finding, ...]
    text: str


# --------------------------------------------------------------------------------------------- noise


def _value_noise(rng: np.random.Generator, cells: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smooth random field (unit variance) sampled at anatomical coordinates in about [-1.4, 1.4]."""
    grid = rng.standard_normal((cells + 2, cells + 2))
    gx = np.clip((u + 1.4) / 2.8, 0, 1) * cells
    gy = np.clip((v + 1.4) / 2.8, 0, 1) * cells
    x0, y0 = np.floor(gx).astype(int), np.floor(gy).astype(int)
    tx, ty = gx - x0, gy - y0
    tx, ty = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty)
    top = grid[y0, x0] * (1 - tx) + grid[y0, x0 + 1] * tx
    bottom = grid[y0 + 1, x0] * (1 - tx) + grid[y0 + 1, x0 + 1] * tx
    return top * (1 - ty) + bottom * ty


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))


@cache
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(c, c)
    return x, y


# ------------------------------------------------------------------------------------------ sampling


def _patient(rng: np.random.Generator) -> dict:
    """Anatomy shared by all studies of one patient."""
    return {
        "body_w": rng.uniform(0.8, 0.97), "lung_c": rng.uniform(0.37, 0.43), "lung_a": rng.uniform(0.25, 0.3),
        "apex": rng.uniform(-0.8, -0.7), "dia_r": rng.uniform(0.36, 0.48), "dia_l_drop": rng.uniform(0.0, 0.07),
        "heart": float(np.clip(rng.normal(1.0, 0.08), 0.84, 1.16)), "heart_x": rng.uniform(0.03, 0.09),
        "heart_y": rng.uniform(0.18, 0.26), "rib0": rng.uniform(-0.86, -0.78), "rib_sp": rng.uniform(0.118, 0.135),
        "rib_curve": rng.uniform(0.5, 0.65), "breasts": rng.uniform(0.5, 1.0) if rng.random() < 0.5 else 0.0,
        "vessel_seed": int(rng.integers(2**31)), "hilum": rng.uniform(0.8, 1.2),
    }


def _pose(rng: np.random.Generator) -> dict:
    """Per-study acquisition: pose, inspiration, exposure and distractors."""
    return {
        "angle": float(np.clip(rng.normal(0, 2.0), -5, 5)) * np.pi / 180, "shift": rng.normal(0, 0.03, 2),
        "scale": rng.uniform(0.93, 1.05), "inspiration": rng.normal(0, 0.03), "mu": rng.uniform(1.6, 2.8),
        "gamma": rng.uniform(0.75, 1.3), "noise": rng.uniform(0.006, 0.02), "offset": rng.uniform(-0.04, 0.04),
        "leads": int(rng.integers(0, 5)) if rng.random() < 0.3 else 0, "skin_fold": rng.random() < 0.12,
    }


def sample_findings(rng: np.random.Generator) -> tuple[Finding, ...]:
    """Independent findings at ``PREVALENCE`` with side, location and severity."""
    out = []
    for name in LESIONS:
        if rng.random() >= PREVALENCE[name]:
            continue
        severity = int(rng.choice(3, p=[0.4, 0.4, 0.2]))
        side = str(rng.choice(["right", "left"])) if name in LATERALISED else None
        location, params = None, {}
        if name == "Pleural Effusion" and rng.random() < 0.25:
            side = "bilateral"
        if name in ("Consolidation", "Pneumonia"):
            location = str(rng.choice(LOBES[side]))
        elif name == "Atelectasis":
            location = str(rng.choice(["base", "mid"], p=[0.7, 0.3]))
        elif name == "Fracture":
            location = str(int(rng.integers(5, 10)))  # posterior rib number
            params = {"q": rng.uniform(0.42, 0.72)}
        params["r"] = rng.random(4).tolist()  # shape jitter
        out.append(Finding(name, severity, side, location, params))
    return tuple(out)


# ----------------------------------------------------------------------------------------- rendering


def render(patient: dict, pose: dict, findings: tuple[Finding, ...], size: int, strength: Mapping[str, float],
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image in [0, 1], bit mask and body mask of one study, all (size, size)."""
    x, y = _pixel_grid(size)
    px = 2.0 / size  # one pixel in normalised units
    ca, sa = np.cos(pose["angle"]), np.sin(pose["angle"])
    xs, ys = (x - pose["shift"][0]) / pose["scale"], (y - pose["shift"][1]) / pose["scale"]
    u, v = ca * xs + sa * ys, -sa * xs + ca * ys  # anatomical coordinates
    by_name = {f.name: f for f in findings}
    s = {name: strength.get(name, 1.0) * BASE_STRENGTH[name] for name in LESIONS}
    masks = {name: np.zeros((size, size), bool) for name in by_name}

    # body: rounded torso below the shoulders, neck above
    bw = patient["body_w"]
    q = np.abs(u)
    torso = np.minimum(bw - q, v - (-0.9 + 0.32 * (q / bw) ** 2))
    neck = np.minimum(0.2 - q, v + 1.3)
    body_d = np.maximum(torso, neck)
    body = _sigmoid(body_d / (0.6 * px))
    thick = np.sqrt(np.clip(1 - (u / bw) ** 2, 0, 1)) ** 0.6 * body
    atten = 0.62 * thick

    # lungs (side sign: -1 image left = patient right, +1 image right = patient left)
    atel = by_name.get("Atelectasis")
    lung_alpha, lung_f, lung_tv = {}, {}, {}
    lx_of = {}
    for side, sign in (("right", -1.0), ("left", 1.0)):
        lx = sign * u
        cx, a, apex = patient["lung_c"], patient["lung_a"], patient["apex"]
        dia = patient["dia_r"] + (patient["dia_l_drop"] if side == "left" else 0.0) + pose["inspiration"]
        if atel is not None and atel.side == side:
            dia -= (0.03 + 0.02 * atel.severity) * s["Atelectasis"]  # volume loss: elevated hemidiaphragm
        tv = np.clip((v - apex) / (dia - apex), 0, 1)
        d_lat = cx + a * (0.78 + 0.42 * np.sqrt(tv)) - lx
        knob = 0.06 * np.exp(-(((v + 0.33) / 0.07) ** 2)) if side == "left" else 0.0
        d_med = lx - (0.12 + knob + 0.02 * tv)
        d_apex = v - (apex + 0.3 * ((lx - cx + 0.03) / a) ** 2)
        d_dia = dia - 0.09 * np.clip(1 - ((lx - cx + 0.05) / (1.25 * a)) ** 2, 0, 1) - v
        f = np.minimum(np.minimum(d_lat, d_med), np.minimum(d_apex, d_dia))
        lung_alpha[side], lung_f[side], lung_tv[side], lx_of[side] = _sigmoid(f / (0.6 * px)), f, tv, lx
        lung_f[side + "_pleura"] = np.minimum(d_lat, d_apex)
        lung_f[side + "_dia"] = dia

    # heart: asymmetric ellipse, larger towards the patient's left
    hs = patient["heart"]
    cm = by_name.get("Cardiomegaly")
    if cm is not None:
        hs *= 1 + (0.14 + 0.07 * cm.severity) * s["Cardiomegaly"]
    hx, hy = patient["heart_x"], patient["heart_y"] + 0.04 * (hs - 1)
    hw = np.where(u > hx, 0.34 * hs, 0.19 * hs)
    hh = 0.24 * (1 + 0.5 * (hs - 1))
    r_heart = np.sqrt(((u - hx) / hw) ** 2 + ((v - hy) / hh) ** 2)
    heart = _sigmoid((1 - r_heart) * 0.2 / (0.6 * px))
    if cm is not None:
        masks["Cardiomegaly"] = r_heart < 1

    # lung markings: ridges of a noise field in polar coordinates around each hilum
    vrng = np.random.default_rng(patient["vessel_seed"])
    air = np.zeros_like(u)
    markings = np.zeros_like(u)
    opacity = np.zeros_like(u)
    ptx_clear = np.ones_like(u)
    for side in ("right", "left"):
        lx = lx_of[side]
        dx, dy = lx - 0.17, v + 0.02
        r = np.sqrt(dx * dx + dy * dy) + 1e-6
        phi = np.arctan2(dy, dx)
        n1 = _value_noise(vrng, 40, phi / np.pi * 1.3, np.log(r + 0.05) * 0.8)
        ridges = np.exp(-(n1 / 0.22) ** 2)
        markings += lung_alpha[side] * ridges * np.exp(-r / 0.4) * 0.12
        markings += lung_alpha[side] * patient["hilum"] * 0.1 * np.exp(-((dx / 0.07) ** 2 + (dy / 0.12) ** 2))
        air += lung_alpha[side]

    fine = _value_noise(rng, 48, u, v)
    air = np.clip(air, 0, 1) * (1 - 0.9 * heart)

    # findings that add opacity inside the lungs
    def lung_point(side: str, tv: float, tu: float) -> tuple[float, float]:
        """Anatomical (u, v) from a relative lung position (tv: apex->base, tu: medial->lateral)."""
        sign = -1.0 if side == "right" else 1.0
        apex, dia = patient["apex"], lung_f[side + "_dia"]
        lx = 0.14 + tu * (patient["lung_c"] + patient["lung_a"] - 0.14)
        return sign * lx, apex + tv * (dia - apex)

    lobe_pos = {"upper": (0.28, 0.55), "middle": (0.62, 0.35), "lingula": (0.62, 0.4), "lower": (0.8, 0.55)}

    for name in ("Consolidation", "Pneumonia"):
        fd = by_name.get(name)
        if fd is None:
            continue
        jit = fd.params["r"]
        tv, tu = lobe_pos[fd.location]
        cu, cv = lung_point(fd.side, tv + 0.08 * (jit[0] - 0.5), tu + 0.2 * (jit[1] - 0.5))
        rad = (0.1 + 0.035 * fd.severity) * (1.15 if name == "Pneumonia" else 1.0)
        rho = np.sqrt(((u - cu) / (rad * (0.8 + 0.4 * jit[2]))) ** 2 + ((v - cv) / rad) ** 2)
        if name == "Consolidation":  # homogeneous, well defined, flat where it meets a fissure
            blob = _sigmoid((1 - rho + 0.25 * _value_noise(rng, 12, u, v)) / 0.06) * 0.5
            if fd.location in ("upper", "middle", "lingula"):
                fissure = lung_point(fd.side, 0.45, 0.5)[1] + 0.04 * (jit[3] - 0.5)
                edge = -1.0 if fd.location == "upper" else 1.0
                blob *= _sigmoid(edge * (v - fissure) / (0.5 * px))
        else:  # patchy, ill defined
            patch = np.clip(0.55 + 0.6 * _value_noise(rng, 28, u, v), 0, 1)
            blob = _sigmoid((1 - rho) / 0.2) * patch * 0.5
        blob *= s[name] * lung_alpha[fd.side]
        opacity += blob
        masks[name] = blob > 0.2 * s[name] * 0.5

    edema = by_name.get("Edema")
    if edema is not None:
        level = (0.07 + 0.03 * edema.severity) * s["Edema"]
        for side in ("right", "left"):
            haze = np.exp(-(((lx_of[side] - 0.2) / 0.2) ** 2) - ((v - 0.02) / 0.3) ** 2) * lung_alpha[side]
            opacity += level * haze * np.clip(1 + 0.3 * fine, 0, 2)
            masks["Edema"] |= haze > 0.35
        markings *= 1 + 0.6 * s["Edema"]

    if atel is not None:
        jit = atel.params["r"]
        tv = (0.78 if atel.location == "base" else 0.58) + 0.06 * (jit[0] - 0.5)
        cu, cv = lung_point(atel.side, tv, 0.5 + 0.2 * (jit[1] - 0.5))
        slope = 0.25 * (jit[2] - 0.5)
        dist = np.abs(v - cv - slope * (u - cu))
        half_len = 0.12 + 0.04 * atel.severity
        band = _sigmoid((0.03 + 0.008 * atel.severity - dist) / (0.5 * px)) * _sigmoid((half_len - np.abs(u - cu)) / 0.03)
        band *= 0.55 * s["Atelectasis"] * lung_alpha[atel.side]
        opacity += band
        masks["Atelectasis"] = band > 0.15 * s["Atelectasis"]

    eff = by_name.get("Pleural Effusion")
    if eff is not None:
        for side in ("right", "left") if eff.side == "bilateral" else (eff.side,):
            apex, dia = patient["apex"], lung_f[side + "_dia"]
            height = max((0.1 + 0.08 * eff.severity) * s["Pleural Effusion"], 3 * px)
            rel = np.clip((lx_of[side] - 0.14) / (patient["lung_c"] + patient["lung_a"] - 0.14), 0, 1.2)
            top = dia - height * (0.4 + 1.0 * rel ** 2)  # meniscus: fluid climbs the lateral wall
            fluid = np.clip((v - top) / 0.05, 0, 1) * lung_alpha[side]
            opacity += 0.85 * fluid
            masks["Pleural Effusion"] |= fluid > 0.3

    ptx = by_name.get("Pneumothorax")
    if ptx is not None:
        width = max((0.06 + 0.035 * ptx.severity) * s["Pneumothorax"], 2 * px)
        w_eff = width * (1.2 - np.clip(lung_tv[ptx.side], 0, 1))  # apical and lateral, thinning downwards
        d = lung_f[ptx.side + "_pleura"]
        region = (d < w_eff) * lung_alpha[ptx.side]
        ptx_clear = 1 - region
        line = np.exp(-(((d - w_eff) / (0.45 * px)) ** 2)) * lung_alpha[ptx.side] * (w_eff > px)
        atten += 0.05 * line
        air = air + 0.3 * region
        masks["Pneumothorax"] = (region > 0.5) & (w_eff > 0)

    opacity = np.clip(opacity, 0, 1)
    atten -= 0.42 * thick * air * (1 - opacity) * (1 + 0.06 * fine)
    atten += markings * ptx_clear * (1 - opacity)
    atten += 0.08 * heart * body

    # bones: spine, posterior ribs, clavicles
    spine = _sigmoid((0.065 - q) / (0.6 * px)) * body
    atten += spine * (0.12 + 0.03 * (np.cos(v * 2 * np.pi / 0.085) > 0.7))
    frac = by_name.get("Fracture")
    rib_sp, rib_w = patient["rib_sp"], 0.028
    rib_v = v - patient["rib0"] - patient["rib_curve"] * np.clip(q - 0.1, 0, None) ** 1.5 + 0.05 * q
    k_float = rib_v / rib_sp
    if frac is not None:
        sign = -1.0 if frac.side == "right" else 1.0
        qf, k = frac.params["q"], int(frac.location) - 3
        on_side = (sign * u) > 0
        lateral = on_side & (q > qf)
        step = (0.015, 0.03, 0.045)[frac.severity]  # larger would skip to the next rib
        k_float = k_float - np.where(lateral, step / rib_sp, 0.0)
    k_idx = np.round(k_float)
    rib_d = np.abs(k_float - k_idx) * rib_sp
    rib_zone = _sigmoid((q - 0.1) / 0.03) * (k_idx >= 0) * (k_idx <= 9) * body * _sigmoid((lung_f["left_dia"] + 0.08 - v) / 0.05)
    rib = _sigmoid((rib_w - rib_d) / (0.5 * px)) * rib_zone
    rib_edge = np.exp(-(((rib_d - rib_w) / (0.5 * px)) ** 2)) * rib_zone
    if frac is not None:
        gap_half = (0.05 + 0.01 * frac.severity) * s["Fracture"]
        near = on_side & (k_idx == k) & (np.abs(q - qf) < max(gap_half, 0.75 * px))
        rib = rib * np.where(near, 0.15, 1.0)
        rib_edge = rib_edge * np.where(near, 0.15, 1.0)
        masks["Fracture"] = on_side & (np.abs(k_float - k) * rib_sp < rib_w + 1.5 * px) & \
            (np.abs(q - qf) < max(gap_half, px) + 1.5 * px)
    atten += 0.05 * rib + 0.025 * rib_edge
    clav_v = -0.64 - 0.18 * (q - 0.1) + 0.25 * (q - 0.35) ** 2
    clav = _sigmoid((0.03 - np.abs(v - clav_v)) / (0.5 * px)) * _sigmoid((0.62 - q) / 0.03) * _sigmoid((q - 0.07) / 0.02)
    atten += 0.13 * clav * body

    # normal variation that mimics findings: breast shadows, ECG leads, skin folds, gastric bubble
    if patient["breasts"]:
        for sign in (-1.0, 1.0):
            bq = ((u - sign * 0.45) / 0.32) ** 2 + ((v - 0.55) / 0.22) ** 2
            atten += 0.07 * patient["breasts"] * _sigmoid((1 - bq) / 0.15) * body * (v > 0.35)
    leads_rng = np.random.default_rng(rng.integers(2**31))
    for _ in range(pose["leads"]):
        cu, cv = leads_rng.uniform(-0.7, 0.7), leads_rng.uniform(-0.6, 0.6)
        ring = np.sqrt((u - cu) ** 2 + (v - cv) ** 2)
        atten += 0.25 * _sigmoid((0.03 - ring) / (0.5 * px))
        wire_v = cv + leads_rng.uniform(-0.5, 0.5) * (u - cu) ** 2 * 3
        atten += 0.1 * np.exp(-(((v - wire_v) / (0.6 * px)) ** 2)) * (np.abs(u - cu) < leads_rng.uniform(0.2, 0.6))
    if pose["skin_fold"]:
        side = "right" if rng.random() < 0.5 else "left"
        d = lung_f[side + "_pleura"] - rng.uniform(0.03, 0.09)
        atten += 0.035 * np.exp(-((d / (0.6 * px)) ** 2)) * lung_alpha[side] * (lung_tv[side] > 0.3)
    gas = ((u - 0.28) / 0.09) ** 2 + ((v - lung_f["left_dia"] - 0.1) / 0.06) ** 2
    atten -= 0.1 * _sigmoid((1 - gas) / 0.2) * body

    # acquisition: exposure, gamma, detector non-uniformity and quantum noise
    atten = np.clip(atten, 0, None)
    img = (1 - np.exp(-pose["mu"] * atten)) / (1 - np.exp(-pose["mu"] * 0.9))
    img = np.clip(img + pose["offset"], 0, 1) ** pose["gamma"]
    img *= 1 + 0.05 * _value_noise(rng, 4, u, v)
    img += pose["noise"] * rng.standard_normal(img.shape) * (0.4 + img)
    image = np.clip(img, 0, 1)

    body_mask = body > 0.5
    bits = np.zeros((size, size), np.uint8)
    for name, m in masks.items():
        bits |= ((m & body_mask).astype(np.uint8) * MASK_BITS[name])
    return image, bits, body_mask


# ------------------------------------------------------------------------------------------- reports

_POSITIVE = {
    "Atelectasis": ["{Sev} {side} {zone} atelectasis.", "There is {sev} plate-like atelectasis in the {side} {zone_n}.",
                    "Linear opacity in the {side} {zone_n}, consistent with {sev} atelectasis.",
                    "{Sev} {side} {zone} atelectasis with volume loss."],
    "Cardiomegaly": ["The heart is {sev_ly} enlarged.", "{Sev} cardiomegaly.", "There is {sev} enlargement of the cardiac silhouette.",
                     "The cardiac silhouette is {sev_ly} enlarged."],
    "Consolidation": ["There is {sev} consolidation in the {side} {lobe}.", "{Sev} {side} {lobe} consolidation.",
                      "Dense airspace consolidation is seen in the {side} {lobe}.",
                      "Focal consolidation in the {side} {lobe}, {sev} in extent."],
    "Edema": ["{Sev} pulmonary edema.", "There is {sev} perihilar haziness consistent with pulmonary edema.",
              "Findings of {sev} interstitial edema with vascular congestion.",
              "Bilateral perihilar opacities, compatible with {sev} pulmonary edema."],
    "Pleural Effusion": ["There is a {sev} {side} pleural effusion.", "{Sev} {side} pleural effusion with blunting of the costophrenic angle.",
                         "A {sev} {side} effusion layers at the base.", "Blunting of the {side} costophrenic angle due to a {sev} pleural effusion."],
    "Pneumonia": ["Patchy opacities in the {side} {lobe}, concerning for pneumonia.", "{Sev} {side} {lobe} pneumonia.",
                  "Ill-defined airspace opacity in the {side} {lobe} likely represents {sev} pneumonia.",
                  "There is {sev} patchy opacity in the {side} {lobe}, consistent with pneumonia."],
    "Pneumothorax": ["There is a {sev} {side} pneumothorax.", "{Sev} {side} apical pneumothorax.",
                     "A {side} pleural line with absent lung markings beyond it indicates a {sev} pneumothorax.",
                     "{Sev} {side} pneumothorax along the apex and lateral chest wall."],
    "Fracture": ["There is a {sev} fracture of the {side} {rib} posterior rib.", "{Sev} {side} {rib} rib fracture.",
                 "Cortical discontinuity of the {side} {rib} posterior rib, consistent with a {sev} fracture.",
                 "Acute {sev} fracture of the {side} {rib} rib."],
}
_NEGATIVE = {
    "Atelectasis": ["No atelectasis.", "No evidence of atelectasis.", "The lungs are well expanded without atelectasis."],
    "Cardiomegaly": ["The heart size is normal.", "Normal cardiac silhouette.", "The cardiomediastinal silhouette is within normal limits.",
                     "No cardiomegaly."],
    "Consolidation": ["No focal consolidation.", "There is no consolidation.", "No lobar consolidation is seen."],
    "Edema": ["No pulmonary edema.", "Pulmonary vascularity is within normal limits.", "There is no evidence of pulmonary edema."],
    "Pleural Effusion": ["No pleural effusion.", "There is no pleural effusion.", "The costophrenic angles are sharp.",
                         "No pleural effusions are seen."],
    "Pneumonia": ["No evidence of pneumonia.", "No findings to suggest pneumonia.", "There is no radiographic evidence of pneumonia."],
    "Pneumothorax": ["No pneumothorax.", "There is no pneumothorax.", "No pneumothorax is seen."],
    "Fracture": ["No acute rib fracture.", "No displaced fracture is seen.", "The osseous structures are intact.",
                 "No acute osseous abnormality."],
}
_IMPRESSION = {
    "Atelectasis": "{Sev} {side} {zone} atelectasis.", "Cardiomegaly": "{Sev} cardiomegaly.",
    "Consolidation": "{Side} {lobe} consolidation.", "Edema": "{Sev} pulmonary edema.",
    "Pleural Effusion": "{Sev} {side} pleural effusion.", "Pneumonia": "{Side} {lobe} pneumonia.",
    "Pneumothorax": "{Sev} {side} pneumothorax.", "Fracture": "{Side} {rib} rib fracture.",
}
_NORMAL_IMPRESSION = ["No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.", "Normal chest radiograph."]
_FILLER = ["PA view of the chest.", "Comparison is made to the prior study.", "The patient is slightly rotated."]
_LOBE_WORDS = {"upper": "upper lobe", "middle": "middle lobe", "lingula": "lingula", "lower": "lower lobe"}
_ZONE_WORDS = {"base": ("basilar", "lung base"), "mid": ("mid lung", "mid lung zone")}
_ORDINAL = {n: f"{n}th" for n in range(4, 13)}
_SEV_LY = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}


def _words(f: Finding) -> dict:
    sev = SEVERITY[f.name][f.severity]
    w = {"sev": sev, "Sev": sev[0].upper() + sev[1:], "sev_ly": _SEV_LY.get(sev, sev), "side": f.side or "",
         "Side": (f.side or "").capitalize()}
    if f.name in ("Consolidation", "Pneumonia"):
        w["lobe"] = _LOBE_WORDS[f.location]
    if f.name == "Atelectasis":
        w["zone"], w["zone_n"] = _ZONE_WORDS[f.location]
    if f.name == "Fracture":
        w["rib"] = _ORDINAL[int(f.location)]
    if f.side == "bilateral":  # "a small bilateral pleural effusion" reads as plural
        w["side"], w["Side"] = "bilateral", "Bilateral"
    return w


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def write_report(findings: tuple[Finding, ...], rng: np.random.Generator) -> str:
    """FINDINGS and IMPRESSION text that carries every label: positives with side/location/severity,
    negations of most absent findings, rare filler, so nearly every sentence is about one finding."""
    positive = {f.name: f for f in findings}
    sentences = []
    for name in rng.permutation(LESIONS):
        if name in positive:
            templates = _POSITIVE[name]
            sentences.append(_cap(templates[rng.integers(len(templates))].format(**_words(positive[name]))))
        elif rng.random() < 0.6:
            sentences.append(_NEGATIVE[name][rng.integers(len(_NEGATIVE[name]))])
    if len(sentences) < 2:
        name = [n for n in LESIONS if n not in positive][0]
        sentences.append(_NEGATIVE[name][0])
    if rng.random() < 0.08:
        sentences.insert(0, _FILLER[rng.integers(len(_FILLER))])
    if findings:
        impression = [_cap(_IMPRESSION[f.name].format(**_words(f))) for f in findings]
    else:
        impression = [_NORMAL_IMPRESSION[rng.integers(len(_NORMAL_IMPRESSION))]]
    return "FINDINGS: " + " ".join(sentences) + " IMPRESSION: " + " ".join(impression)


# ---------------------------------------------------------------------------------------------- API


def _study_rngs(seed: int, index: int, patient: int) -> tuple[np.random.Generator, np.random.Generator]:
    return (np.random.default_rng(np.random.SeedSequence([seed, 1, patient])),
            np.random.default_rng(np.random.SeedSequence([seed, 2, index])))


def make_study(seed: int, index: int, patient: int, size: int = 128,
               strength: float | Mapping[str, float] = 1.0) -> Study:
    """Study ``index`` of patient ``patient``: the same arguments always give the same arrays."""
    prng, srng = _study_rngs(seed, index, patient)
    anatomy, pose = _patient(prng), _pose(srng)
    findings = sample_findings(srng)
    image, mask, body = render(anatomy, pose, findings, size, resolve_strengths(strength), srng)
    text = write_report(findings, srng)
    return Study((image * 255 + 0.5).astype(np.uint8), mask, body, findings, text)


def resolve_strengths(strength: float | Mapping[str, float]) -> dict[str, float]:
    """Per-finding strengths, checked: masks are only guaranteed non-empty in (0.25, 3]."""
    if isinstance(strength, Mapping):
        unknown = set(strength) - set(LESIONS)
        if unknown:
            raise ConfigError(f"unknown finding(s) in strength: {sorted(unknown)}; expected some of {LESIONS}")
        out = {name: float(strength.get(name, 1.0)) for name in LESIONS}
    else:
        out = {name: float(strength) for name in LESIONS}
    bad = {name: v for name, v in out.items() if not 0.25 <= v <= 3.0}
    if bad:
        raise ConfigError(f"strength must be between 0.25 and 3 (1 = calibrated default), got {bad}")
    return out


def assign_patients(n: int, seed: int) -> tuple[list[int], list[str]]:
    """Patient index and split of each image: some patients get a follow-up study; splits are drawn
    per patient, so no patient spans two splits. A prefix of a longer set gets the same answer."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    cum = np.cumsum([p for _, p in SPLIT_FRACTIONS])
    patients: list[int] = []
    splits: list[str] = []
    for i in range(n):
        follow_up, split_draw = rng.random() < SECOND_STUDY_P, rng.random()
        if i and follow_up and (i < 2 or patients[-2] != patients[-1]):
            patients.append(patients[-1])
            splits.append(splits[-1])
        else:
            patients.append(patients[-1] + 1 if patients else 0)
            splits.append(SPLIT_FRACTIONS[min(int(np.searchsorted(cum, split_draw, side="right")), 2)][0])
    return patients, splits


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _work(job: tuple) -> dict:
    out_dir, seed, index, patient, size, strength = job
    study = make_study(seed, index, patient, size, strength)
    name = f"synth_{index:06d}"
    (out_dir / "images" / f"{name}.png").write_bytes(_png(study.image))
    (out_dir / "masks" / f"{name}.png").write_bytes(_png(study.mask))
    findings = [{k: v for k, v in asdict(f).items() if k != "params"} | {"severity": SEVERITY[f.name][f.severity]}
                for f in study.findings]
    return {"id": name, "text": study.text, "findings": findings}


def generate(out_dir: str | Path, n: int, seed: int = 0, size: int = 128, strength: float | Mapping[str, float] = 1.0,
             workers: int | None = None, progress: bool = True) -> Path:
    """Write ``n`` synthetic studies to ``out_dir`` and return the path of its ``manifest.csv``.

    ``strength`` scales how visible the findings are (1 = calibrated default; a mapping sets it per
    finding). ``workers`` processes render in parallel (default: all cores); the output is the same
    for any number of workers. Parallel rendering uses the ``forkserver`` start method, so a script
    that calls this must guard its entry point with ``if __name__ == "__main__":`` (or pass
    ``workers=1``).
    """
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    if not 32 <= size <= 1024:
        raise ConfigError(f"size must be between 32 and 1024 pixels, got {size}")
    strengths = resolve_strengths(strength)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    patients, splits = assign_patients(n, seed)
    jobs = [(out_dir, seed, i, patients[i], size, strengths) for i in range(n)]
    workers = min(os.cpu_count() or 1, 8) if workers is None else max(1, workers)
    bar = tqdm(total=n, desc="synthesising radiographs", unit="img", disable=not progress)
    results = []
    if workers == 1:
        for job in jobs:
            results.append(_work(job))
            bar.update(1)
    else:
        with multiprocessing.get_context("forkserver").Pool(workers) as pool:
            for r in pool.imap(_work, jobs, chunksize=max(1, min(16, n // (4 * workers)))):
                results.append(r)
                bar.update(1)
    bar.close()

    manifest = out_dir / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["image", "text", "patient_id", "split", *FINDINGS])
        for r, patient, split in zip(results, patients, splits):
            positive = {f["name"] for f in r["findings"]}
            labels = [int(not positive)] + [int(name in positive) for name in LESIONS]
            writer.writerow([f"images/{r['id']}.png", r["text"], f"P{patient:06d}", split, *labels])
    with open(out_dir / "findings.jsonl", "w") as fh:
        for r in results:
            fh.write(json.dumps({"image": f"images/{r['id']}.png", "mask": f"masks/{r['id']}.png",
                                 "findings": r["findings"]}) + "\n")
    meta = {"generator": "convirt.data.synthetic", "version": GENERATOR_VERSION, "seed": seed, "n": n, "size": size,
            "strength": strengths, "findings": FINDINGS, "mask_bits": MASK_BITS, "prevalence": PREVALENCE,
            "side_convention": "side words are the patient's; the patient's right is on the image left",
            "splits": {s: splits.count(s) for s, _ in SPLIT_FRACTIONS}, "patients": len(set(patients))}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return manifest


# ------------------------------------------------------------------------------- localized targets


def finding_masks(bits: np.ndarray) -> dict[str, np.ndarray]:
    """A stored bit mask (``masks/*.png``) -> ``{finding: (H, W) bool}`` for the findings it holds."""
    bits = np.asarray(bits)
    return {name: (bits & MASK_BITS[name]) > 0 for name in LESIONS if (bits & MASK_BITS[name]).any()}


def finding_boxes(mask: np.ndarray, merge_px: int = 2, min_pixels: int = 4) -> list[list[float]]:
    """One ``[x, y, width, height]`` box (pixel edges, RSNA/COCO layout) per connected lesion of ``mask``.

    Patchy lesions (pneumonia) fall apart into specks at the 0/1 threshold, so pixels within
    ``merge_px`` of each other belong to one lesion (8-connected after dilation); each box spans the
    lesion's own pixels. Components under ``min_pixels`` are dropped (anti-aliasing crumbs).
    """
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    grown = ndimage.binary_dilation(mask, iterations=merge_px) if merge_px > 0 else mask
    labels, n = ndimage.label(grown, structure=np.ones((3, 3), bool))
    boxes = []
    for k in range(1, n + 1):
        ys, xs = np.nonzero(mask & (labels == k))
        if len(ys) < min_pixels:
            continue
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        boxes.append([float(x0), float(y0), float(x1 - x0), float(y1 - y0)])
    return sorted(boxes)


def write_localized_manifest(root: str | Path, finding: str, out: str | Path | None = None) -> Path:
    """A segmentation + detection manifest for one finding of a generated set (images unchanged).

    Columns as the real data sets' adapters write them, so the same evaluation code reads both:
    ``mask`` is a 0/255 PNG of the finding (blank when absent), like SIIM-ACR's; ``boxes`` is JSON
    ``[[x, y, width, height], ...]`` of its connected lesions in pixels, like RSNA Pneumonia's.
    Written to ``out`` (default ``ROOT/localized_<finding>.csv``); masks go to ``ROOT/masks_<finding>/``.
    """
    import pandas as pd

    if finding not in LESIONS:
        raise ConfigError(f"unknown finding {finding!r}; choose one of {LESIONS}")
    root = Path(root)
    slug = finding.lower().replace(" ", "_")
    df = pd.read_csv(root / "manifest.csv", dtype={"image": str, "text": str, "patient_id": str, "split": str})
    (root / f"masks_{slug}").mkdir(exist_ok=True)
    masks, boxes = [], []
    for image in df["image"]:
        name = Path(image).name
        bits = np.asarray(Image.open(root / "masks" / name))
        mask = (bits & MASK_BITS[finding]) > 0
        if mask.any():
            (root / f"masks_{slug}" / name).write_bytes(_png(mask.astype(np.uint8) * 255))
            masks.append(f"masks_{slug}/{name}")
        else:
            masks.append("")
        boxes.append(json.dumps(finding_boxes(mask)))
    df["mask"], df["boxes"] = masks, boxes
    out = Path(out) if out else root / f"localized_{slug}.csv"
    df.to_csv(out, index=False)
    return out
