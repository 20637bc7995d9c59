"""Evaluation: metrics of a classifier (:mod:`~utils.evaluation.metrics`), probes on frozen features, robustness
to occlusion and pose, where region heatmaps fall on the face, label efficiency, tables over run records and
the plots the notebooks draw."""
