"""Distillation repair (spec 10.2): a fresh student learns the suspect encoder from a small clean set."""
