"""Augmentation: the epoch plan (order, crops, flips), MLKD's strong view (per sample and batched), ImageNet's views."""
