"""Trainers of the plugin models (looked up as <Model>Trainer)."""
