"""The test-set scores of a trained model and the figures of a finished run; numpy,
scikit-learn and matplotlib only."""
