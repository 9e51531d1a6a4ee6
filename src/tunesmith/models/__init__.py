"""Models: the zoo of aliases (zoo), building a base model with LoRA, dropout and freezing (build), saving and
loading a run's model atomically (saved)."""
