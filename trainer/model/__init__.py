"""The serving contract shared by trainer and worker: columns, encoding, drift profile, bundle.

Needs numpy and xgboost only (no pandas, scikit-learn or optuna), so the worker can load a
model without the training stack.
"""
