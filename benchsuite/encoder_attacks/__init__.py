"""What the model attacks (BadEncoder, DRUPE) share: the trigger, the shadow set and references, the
frozen-BatchNorm fine-tune with the clean encoder's shadow features computed once."""
