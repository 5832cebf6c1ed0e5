"""Loader kinds (torch, tensor, ffcv) for each dataset kind (in-memory arrays, image folders) and ``make_loaders``."""
