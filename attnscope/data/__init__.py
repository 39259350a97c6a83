"""Data: sources -> manifest -> cache -> loader, with augmentation, balancing and splits.

Nothing here imports models or training code.
"""
