"""DECREE (Feng et al., CVPR 2023): trigger inversion on the encoder alone (spec section 10.1)."""
