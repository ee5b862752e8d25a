"""Models: the BentoML store, integrity and reference checks, the inference forms, the registry of what is served."""
