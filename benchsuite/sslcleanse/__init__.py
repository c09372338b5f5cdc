"""SSL-Cleanse: encoder-level backdoor detection and mitigation (ECCV 2024)."""
