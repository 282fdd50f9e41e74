"""Measuring what a GAN makes."""
