"""Looking inside: layer shapes and arithmetic (summary, explain), the test-set report, the tutorial's Q&A as
checked computations (concepts), and its hyperparameter questions measured (study)."""
