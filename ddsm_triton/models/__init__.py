"""Segmentation models built on DDSM."""
