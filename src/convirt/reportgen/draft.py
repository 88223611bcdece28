"""Drafting a report by retrieval (CXR-RePaiR, Endo et al., ML4H 2021), and a selector that fixes
its two known failure modes.

CXR-RePaiR embeds the image, ranks the corpus entries by cosine similarity with the image and
returns the top report ("report") or the top *k* sentences ("topk"). Its weaknesses, which
:func:`select_adaptive` addresses (our deviations from the paper):

1. **Redundancy.** The top sentences say the same thing in other words ("Small left effusion.",
   "There is a small left pleural effusion."). We refuse a sentence whose findings (the labeller's
   observations, whatever their polarity) are already covered by a chosen one, which also refuses
   contradictions ("No pleural effusion." after "Small left effusion."), and order the optional
   sentences by maximal marginal relevance (MMR, Carbonell & Goldstein 1998):
   ``lam * score - (1 - lam) * max cosine to a chosen sentence``, refusing near-duplicates outright.
2. **Fixed length.** k sentences whatever the image: a normal image gets k - 1 wrong findings.
   Our length is decided per image. A **normal gate** first: for each observation, the best-scoring
   sentence that asserts it is compared with the best-scoring sentence that denies it (the
   observation's "normal prototype"); when no observation's margin exceeds ``normal_threshold``,
   the image takes the **normal path**: the best explicit normal statement ("No acute
   cardiopulmonary process.") and nothing else. Otherwise the findings are those asserted among
   the ``window`` best-scoring sentences, once each; denials and findings-free sentences follow in
   MMR order until the next one scores ``drop`` below the best sentence (or below ``floor``).
   :func:`calibrate` learns ``window`` and ``normal_threshold`` (label F1) and ``drop``
   (ROUGE-L) on held-out images with reports; uncalibrated defaults are 3, 0 and 0.1.

Hubs: a contrastive text tower trained on whole reports gives some sentences (long ones, common
ones) a high cosine with *every* image, and CXR-RePaiR's ranking is then mostly a ranking of
sentences. :func:`calibrate` subtracts each entry's mean cosine over reference training images
(the centred score, in the spirit of CSLS, Conneau et al. 2018, without the image-side term since
it does not change an image's ranking), so a sentence ranks high when it fits *this* image better
than it fits images in general. No test image's result depends on other test images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from convirt.errors import ConfigError
from convirt.reportgen.labeller import NEGATIVE, NO_FINDING, POSITIVE, SUPPORT_DEVICES, UNCERTAIN

METHODS = ("adaptive", "topk", "report")
_NOT_FINDINGS = (NO_FINDING, "Other")


@dataclass
class SelectionParams:
    """Knobs of :func:`select_adaptive`; :func:`calibrate` learns ``window``, ``normal_threshold`` and ``drop``."""

    window: int = 3  # findings are those asserted by one of the ``window`` best-scoring sentences
    normal_threshold: float = 0.0  # normal path when no observation's evidence margin exceeds this
    lam: float = 0.7  # MMR: weight of relevance against redundancy (optional sentences)
    drop: float | None = 0.1  # optional sentences stop below (best score - drop)
    floor: float | None = None  # ... and below this absolute score
    max_sentences: int = 8
    duplicate_cosine: float = 0.9  # refuse a sentence this similar (text embeddings) to a chosen one
    normal_sentences: int = 1
    shortlist: int = 1024  # entries retrieved by FAISS per image; evidence is read from these

    def validate(self) -> "SelectionParams":
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"lambda must be in [0, 1], got {self.lam}")
        if min(self.window, self.max_sentences, self.normal_sentences, self.shortlist) < 1:
            raise ConfigError("window, max_sentences, normal_sentences and shortlist must be at least 1")
        if self.drop is not None and self.drop < 0:
            raise ConfigError(f"drop must be >= 0, got {self.drop}")
        return self

    @classmethod
    def from_calibration(cls, calibration: dict | None, **overrides) -> "SelectionParams":
        fields = {}
        if calibration:
            fields = {k: v for k, v in calibration.get("params", {}).items() if k in cls.__dataclass_fields__}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields).validate()


@dataclass
class Draft:
    """A drafted report: its sentences, each with its score and cosine similarity to the image."""

    method: str
    sentences: list[str]
    scores: list[float]  # what ranked them (centred cosine on a calibrated corpus)
    similarities: list[float]  # plain cosine with the image
    indices: list[int]  # corpus entries
    normal: bool = False
    evidence: dict[str, float] = field(default_factory=dict)  # adaptive: per observation, best positive - best negative

    @property
    def text(self) -> str:
        return " ".join(self.sentences)

    def to_dict(self) -> dict:
        return {**asdict(self), "text": self.text}


def _is_abnormal(labels: dict[str, int], name: str | None = None) -> bool:
    items = labels.items() if name is None else [(name, labels.get(name))]
    return any(v in (POSITIVE, UNCERTAIN) for k, v in items if k not in _NOT_FINDINGS)


def _mentions(labels: dict[str, int]) -> set[str]:
    return {k for k in labels if k != "Other"}


def observation_evidence(scores: np.ndarray, labels: Sequence[dict[str, int]]) -> dict[str, float]:
    """Per observation: best score of an entry asserting it (positive or uncertain) minus best score of
    an entry denying it; with no denial among the entries, minus the best explicit normal statement
    (or minus the best entry asserting nothing)."""
    best_pos: dict[str, float] = {}
    best_neg: dict[str, float] = {}
    best_normal = best_quiet = -np.inf
    for s, lab in zip(scores, labels):
        s = float(s)
        if lab.get(NO_FINDING) == POSITIVE:
            best_normal = max(best_normal, s)
        if not _is_abnormal(lab):
            best_quiet = max(best_quiet, s)
        for name, value in lab.items():
            if name in _NOT_FINDINGS:
                continue
            target = best_neg if value == NEGATIVE else best_pos
            if s > target.get(name, -np.inf):
                target[name] = s
    fallback = best_normal if np.isfinite(best_normal) else best_quiet
    out = {}
    for name, p in best_pos.items():
        ref = best_neg.get(name, fallback)
        out[name] = p - ref if np.isfinite(ref) else p
    return out


def _gate(evidence: dict[str, float]) -> float:
    """The normal gate's statistic: the largest evidence margin; support devices do not make an image
    abnormal (as in CheXpert's No Finding)."""
    return max((v for o, v in evidence.items() if o != SUPPORT_DEVICES), default=-np.inf)


def select_topk(scores: np.ndarray, k: int) -> list[int]:
    """CXR-RePaiR: the ``k`` best-scoring entries (positions into ``scores``), best first."""
    return [int(i) for i in np.argsort(-np.asarray(scores), kind="stable")[:k]]


def select_adaptive(scores: np.ndarray, embeddings: np.ndarray, labels: Sequence[dict[str, int]],
                    params: SelectionParams | None = None) -> tuple[list[int], bool, dict[str, float]]:
    """Redundancy-aware, adaptive-length selection among candidate entries.

    ``scores`` (m,), ``embeddings`` (m, d) L2-normalised text embeddings and ``labels`` (m dicts of
    the labeller) describe the candidates. Returns (chosen positions in output order, whether the
    normal path was taken, per-observation evidence).

    1. Normal gate: when no observation's evidence margin (:func:`observation_evidence`) exceeds
       ``normal_threshold``, the image is normal: the best explicit normal statement(s), nothing else.
    2. Findings: the sentences among the ``window`` best that assert a finding, best first, each
       refused when it mentions an observation already covered (a repeat, or a contradiction).
    3. Optional sentences (denials, findings-free sentences) in MMR order, refused when they mention
       a covered observation or nearly duplicate a chosen sentence, until the next one scores below
       ``best - drop`` (or ``floor``) or ``max_sentences`` are chosen.
    """
    p = (params or SelectionParams()).validate()
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return [], False, {}
    evidence = observation_evidence(scores, labels)
    order = [int(i) for i in np.argsort(-scores, kind="stable")]

    def normal_path() -> tuple[list[int], bool, dict[str, float]]:
        normal = [i for i in order if labels[i].get(NO_FINDING) == POSITIVE and not _is_abnormal(labels[i])]
        if not normal:  # a corpus without normal statements: its best entry that denies something
            normal = [i for i in order if not _is_abnormal(labels[i]) and _mentions(labels[i])][:1]
        return normal[:p.normal_sentences], True, evidence

    if _gate(evidence) <= p.normal_threshold:
        return normal_path()
    chosen: list[int] = []
    covered: set[str] = set()
    for i in order[:p.window]:  # required: the findings the best sentences assert, once each
        if _is_abnormal(labels[i]) and not _mentions(labels[i]) & covered and len(chosen) < p.max_sentences:
            chosen.append(i)
            covered |= _mentions(labels[i])
    if not chosen:
        return normal_path()
    stop = max(scores[order[0]] - p.drop if p.drop is not None else -np.inf, p.floor if p.floor is not None else -np.inf)
    pool = [i for i in order if i not in chosen and not _is_abnormal(labels[i]) and labels[i].get(NO_FINDING) != POSITIVE]
    while pool and len(chosen) < p.max_sentences:
        pool_arr = np.asarray(pool)
        redundancy = (embeddings[pool_arr] @ embeddings[chosen].T).max(axis=1)
        j = int(np.argmax(p.lam * scores[pool_arr] - (1 - p.lam) * redundancy))
        i = pool.pop(j)
        if scores[i] < stop:
            break  # adaptive length: the next sentence is not similar enough to the image
        if _mentions(labels[i]) & covered or redundancy[j] > p.duplicate_cosine:
            continue  # says what a chosen sentence says (or its opposite), or nearly repeats it
        chosen.append(i)
        covered |= _mentions(labels[i])
    return chosen, False, evidence


def draft_reports(corpus, image_emb: np.ndarray, method: str = "adaptive", k: int | None = None,
                  params: SelectionParams | None = None, centred: bool = True) -> list[Draft]:
    """One :class:`Draft` per image embedding (rows of ``image_emb``).

    ``method``: ``adaptive`` (our selector), ``topk`` (CXR-RePaiR's k sentences), ``report`` (the
    single best entry, for a report-level corpus). ``centred=False`` ranks by plain cosine even on a
    calibrated corpus (CXR-RePaiR as published).
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    image_emb = np.atleast_2d(np.asarray(image_emb, dtype=np.float32))
    if params is None:
        params = SelectionParams.from_calibration(corpus.calibration)
    if k is None:
        k = int((corpus.calibration or {}).get("topk_k", 3)) if method == "topk" else 1
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    want = params.shortlist if method == "adaptive" else k
    if centred or corpus.image_mean is None:
        scores, idx = corpus.search(image_emb, want)
    else:
        scores, idx = _raw_search(corpus, image_emb, want)
    drafts = []
    for row in range(len(image_emb)):
        s, ix = scores[row], idx[row]
        keep = ix >= 0
        s, ix = s[keep], ix[keep]
        normal, evidence = False, {}
        if method == "adaptive":
            picked, normal, evidence = select_adaptive(s, corpus.embeddings[ix], [corpus.labels[i] for i in ix], params)
        else:
            picked = select_topk(s, k)
        entries = [int(ix[j]) for j in picked]
        drafts.append(Draft(method, [corpus.texts[e] for e in entries], [float(s[j]) for j in picked],
                            [float(v) for v in corpus.cosine(image_emb[row], entries)], entries, normal,
                            {o: round(v, 4) for o, v in evidence.items()}))
    return drafts


def _raw_search(corpus, image_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain-cosine top-k on a calibrated index: query ``[x, 0]`` ignores the centring coordinate."""
    q = image_emb / np.maximum(np.linalg.norm(image_emb, axis=1, keepdims=True), 1e-12)
    q = np.concatenate([q, np.zeros((len(q), 1), np.float32)], axis=1).astype(np.float32)
    return corpus.index.search(q, min(int(k), len(corpus)))


# --------------------------------------------------------------------------------------- calibration


def corpus_image_mean(corpus, reference_emb: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Each entry's mean cosine with the reference images (its "hubness"), computed in chunks."""
    ref = np.asarray(reference_emb, dtype=np.float32)
    ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    mean_ref = ref.mean(axis=0)  # mean_i <x_i, e_j> = <mean_i x_i, e_j>
    return np.concatenate([corpus.embeddings[s:s + chunk] @ mean_ref for s in range(0, len(corpus), chunk)])


def _window_findings(scores: np.ndarray, labels: Sequence[dict[str, int]], max_window: int) -> list[set[str]]:
    """For w = 1..max_window: the observations asserted by the w best-scoring entries."""
    out, found = [], set()
    for i in np.argsort(-np.asarray(scores), kind="stable")[:max_window]:
        found = found | {k for k, v in labels[i].items() if v in (POSITIVE, UNCERTAIN) and k not in _NOT_FINDINGS}
        out.append(found)
    return out + [found] * (max_window - len(out))


def _micro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    tp = float((y_true & y_pred).sum())
    return 2 * tp / max(float(y_true.sum() + y_pred.sum()), 1.0)


def calibrate(corpus, reference_emb: np.ndarray, fit_emb: np.ndarray, fit_reports: Sequence[str],
              observations: Sequence[str], base: SelectionParams | None = None, windows: Sequence[int] = range(1, 13),
              ks: Sequence[int] = range(1, 9), drops: Sequence[float] = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)) -> dict:
    """Learn the selection's parameters on images with reports, and store them with the corpus.

    * centring: each entry's mean cosine over ``reference_emb`` (training images);
    * ``window`` and ``normal_threshold`` jointly, by micro label F1 over ``observations`` on
      ``fit_emb`` against the labeller's labels of ``fit_reports`` (held-out images: the validation
      split), on a grid (windows x quantiles of the images' largest evidence margin);
    * ``drop`` (the adaptive length of the optional sentences) by ROUGE-L on the same images;
    * ``topk_k``, the k of the CXR-RePaiR baseline, by micro label F1, so both are tuned alike.
    """
    from convirt.reportgen.labeller import binarize, label_report
    from convirt.reportgen.metrics import reference_text, rouge_l

    base = base or SelectionParams()
    image_mean = corpus_image_mean(corpus, reference_emb)
    corpus.set_calibration(image_mean, {"params": {}, "n_reference_images": int(len(reference_emb))})
    full = list(observations)
    y_true = np.array([binarize(label_report(r), full) for r in fit_reports])
    references = [reference_text(r) for r in fit_reports]
    scores, idx = corpus.search(fit_emb, base.shortlist)
    gates, found = [], []
    for row in range(len(fit_emb)):
        labs = [corpus.labels[i] for i in idx[row] if i >= 0]
        s = scores[row][idx[row] >= 0]
        gates.append(_gate(observation_evidence(s, labs)))
        found.append(_window_findings(s, labs, max(windows)))
    gates = np.asarray(gates)
    candidates = np.unique(np.quantile(gates[np.isfinite(gates)], np.linspace(0, 0.9, 31))) if np.isfinite(gates).any() else [0.0]
    grid = {}
    for w in windows:
        for t in candidates:
            pred = []
            for g, f in zip(gates, found):
                present = set() if g <= t else f[w - 1]
                pred.append([int(o in present) if o != NO_FINDING else int(not present) for o in full])
            grid[(w, float(t))] = _micro_f1(y_true, np.asarray(pred))
    window, threshold = max(grid, key=lambda key: (grid[key], -key[0]))
    params = SelectionParams(**{**asdict(base), "window": int(window), "normal_threshold": float(threshold)})
    rouge = {}
    for drop in drops:
        params.drop = drop
        rouge[drop] = rouge_l([d.text for d in draft_reports(corpus, fit_emb, "adaptive", params=params)], references)
    params.drop = max(rouge, key=lambda d: (rouge[d], -d))
    topk_f1 = {}
    for k in ks:
        drafts_k = draft_reports(corpus, fit_emb, "topk", k=k, params=params)
        topk_f1[k] = _micro_f1(y_true, np.array([binarize(label_report(d.text), full) for d in drafts_k]))
    calibration = {"params": asdict(params), "n_reference_images": int(len(reference_emb)), "n_fit_images": int(len(fit_emb)),
                   "topk_k": int(max(topk_f1, key=lambda k: (topk_f1[k], -k))), "observations": full, "fit": {
                       "adaptive_micro_f1": grid[(window, threshold)],
                       "rouge_l_by_drop": {str(k): v for k, v in rouge.items()},
                       "topk_micro_f1_by_k": {str(k): v for k, v in topk_f1.items()}}}
    corpus.set_calibration(image_mean, calibration)
    return calibration
