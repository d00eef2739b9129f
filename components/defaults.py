"""Defaults shared by the pipeline, the command line and the KFP client that no step config owns.

Every other default lives in the step configs (TrainConfig, EvaluateConfig, ...), which the
pipeline's signature and the CLI flags read; these two have no config of their own.
"""

# Where the training PyTorchJob and the Triton Deployment go (pipeline `namespace`,
# `llmft train --launcher pytorchjob --namespace`).
DEFAULT_NAMESPACE = "llmft"
# The MLflow experiment of the steps' runs and the KFP experiment that `llmft submit` and
# `llmft schedule` file runs under: one name, so a run is found under it in both UIs.
DEFAULT_EXPERIMENT = "llmft"
