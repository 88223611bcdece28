"""Report drafting by retrieval (CXR-RePaiR, Endo et al., ML4H 2021) on any convirt model.

corpus: de-duplicated, labelled, FAISS-indexed sentence or report corpora bound to a model;
draft: CXR-RePaiR's selectors and a redundancy-aware, adaptive-length one, plus calibration;
labeller: a rule-based CheXpert-style labeller with negation and uncertainty;
metrics: BLEU, ROUGE-L, label F1, repeated findings; evaluate: ``convirt evaluate report-gen``.
See docs/report_generation.md.
"""
