"""Scores of drafted reports: n-gram overlap (BLEU-1..4, ROUGE-L), clinical correctness (label F1)
and redundancy (repeated and contradicted findings).

BLEU is sacrebleu's corpus BLEU (Post, 2018; 13a tokenisation, lower-cased, as report-generation
papers lower-case), computed with ``max_ngram_order`` n for BLEU-n, so BLEU-n is the geometric mean
of the 1..n-gram precisions with the brevity penalty. ROUGE-L is the mean over reports of
rouge-score's ROUGE-L F-measure (Lin, 2004; its own tokeniser, no stemming). Label F1 compares the
labeller's 0/1 labels of each draft with those of its reference report (scikit-learn, positive
class; uncertain counted as positive, see :func:`convirt.reportgen.labeller.binarize`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convirt.reportgen.labeller import NEGATIVE, label_sentence, mentioned, report_sentences


def bleu(hypotheses: Sequence[str], references: Sequence[str], max_order: int = 4) -> dict[str, float]:
    """``{"BLEU-1": ..., ..., "BLEU-max_order": ...}`` on a 0-1 scale (sacrebleu reports 0-100)."""
    from sacrebleu.metrics import BLEU

    _check(hypotheses, references)
    out = {}
    for n in range(1, max_order + 1):
        scorer = BLEU(max_ngram_order=n, lowercase=True, effective_order=False)
        out[f"BLEU-{n}"] = scorer.corpus_score(list(hypotheses), [list(references)]).score / 100.0
    return out


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure over report pairs (0-1)."""
    from rouge_score import rouge_scorer

    _check(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(np.mean([scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references)]))


def label_f1(y_true: Sequence[Sequence[int]], y_pred: Sequence[Sequence[int]], names: Sequence[str]) -> dict:
    """Micro and macro F1 (and per-label F1, precision, recall, support) of 0/1 label matrices.

    Macro F1 averages over every label; ``macro_f1_present`` only over labels with at least one
    positive reference (a label absent from the references can only lose)."""
    from sklearn.metrics import f1_score, precision_score, recall_score

    t, p = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if t.shape != p.shape or t.ndim != 2 or t.shape[1] != len(names):
        raise ValueError(f"label matrices must both be (n, {len(names)}), got {t.shape} and {p.shape}")
    present = t.sum(axis=0) > 0
    per = {name: {"f1": float(f1_score(t[:, j], p[:, j], zero_division=0)),
                  "precision": float(precision_score(t[:, j], p[:, j], zero_division=0)),
                  "recall": float(recall_score(t[:, j], p[:, j], zero_division=0)), "support": int(t[:, j].sum()),
                  "predicted": int(p[:, j].sum())} for j, name in enumerate(names)}
    return {"micro_f1": float(f1_score(t, p, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(t, p, average="macro", zero_division=0)),
            "macro_f1_present": float(np.mean([per[n]["f1"] for n, ok in zip(names, present) if ok])) if present.any() else 0.0,
            "per_label": per}


def paired_bootstrap_micro_f1(y_true, pred_a, pred_b, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Micro F1 of ``pred_a`` minus that of ``pred_b`` on the same images, with a 95% percentile
    interval from resampling images (paired: both selectors see the same resample)."""
    t, a, b = (np.asarray(x, dtype=bool) for x in (y_true, pred_a, pred_b))

    def micro(idx: np.ndarray, p: np.ndarray) -> float:
        tp = (t[idx] & p[idx]).sum()
        return 2 * tp / max(int(t[idx].sum() + p[idx].sum()), 1)

    everyone = np.arange(len(t))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(t), len(t))
        diffs.append(micro(idx, a) - micro(idx, b))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"diff": float(micro(everyone, a) - micro(everyone, b)), "low": float(low), "high": float(high), "n_boot": n_boot}


def repetition(sentences: Sequence[str]) -> dict[str, int]:
    """Redundancy of one report, from the labeller's observations per sentence.

    ``repeated``: sum over observations of (sentences mentioning it - 1) where positive; an explicit
    normal statement ("No acute cardiopulmonary process.") counts as a mention of No Finding.
    ``contradicted``: observations both asserted (positive or uncertain) and denied in the report.
    """
    per_obs: dict[str, int] = {}
    polarity: dict[str, set] = {}
    for s in sentences:
        labels = label_sentence(s)
        for name in mentioned(labels):
            per_obs[name] = per_obs.get(name, 0) + 1
            polarity.setdefault(name, set()).add("neg" if labels[name] == NEGATIVE else "pos")
    return {"repeated": sum(n - 1 for n in per_obs.values() if n > 1),
            "contradicted": sum(1 for v in polarity.values() if len(v) == 2)}


def reference_text(report: str) -> str:
    """What a draft is compared with: the report's FINDINGS and IMPRESSION sentences, headers removed."""
    return " ".join(report_sentences(report))


def report_repetition(text: str) -> dict[str, int]:
    """:func:`repetition` of a report given as text (FINDINGS + IMPRESSION sentences)."""
    return repetition(report_sentences(text))


def _check(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references) or not len(hypotheses):
        raise ValueError(f"need as many references as hypotheses, at least one ({len(hypotheses)} vs {len(references)})")

