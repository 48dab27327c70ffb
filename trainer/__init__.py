"""Trainer: data → features → tune → train → evaluate → register → promote."""
